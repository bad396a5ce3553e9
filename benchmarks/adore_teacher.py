"""``ar2 adore`` with and without a teacher, over seeds: each arm's nDCG@10 and R@100 mean ±
sd on the runs' dev and test splits, the minutes its training took, and paired t-tests of each
arm against ``--base`` over every (seed, query) pair, Holm-corrected per split and measure.

An arm is a list of ``ar2 adore`` outputs, one per seed run, in the same run order for every
arm (``runs/q42``, ``runs/q43``, ...). The ``run`` row is the runs' own retrievers, the start
of every arm.

    .venv/bin/python benchmarks/adore_teacher.py --base plain \\
        --arm plain runs/adorekd/q42-plain runs/adorekd/q43-plain runs/adorekd/q44-plain \\
        --arm ensemble runs/adorekd/q42-ens runs/adorekd/q43-ens runs/adorekd/q44-ens \\
        --out runs/adorekd/table
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from ar2._io import atomic_write_json, atomic_write_text

MEASURES = ["nDCG@10", "R@100"]
SPLITS = ("dev", "test")


def per_query(folder: Path, start: bool = False) -> dict[str, dict[str, dict[str, float]]]:
    """``split -> measure -> query -> value`` of an ``ar2 adore`` output's query tower over its
    index (``start``: the run's retriever instead)."""
    from ar2.data.beir import load_queries
    from ar2.encoders import BiEncoder
    from ar2.evaluate import per_query as values_of
    from ar2.index import FaissIndex
    from ar2.pipeline import DenseRetriever
    from ar2.train.derived import run_splits

    run = Path(json.loads((folder / "adore.json").read_text())["run"])
    data = Path(json.loads((run / "config.json").read_text())["data"]["path"])
    model = run / "retriever" if start else folder / "retriever"
    retriever = DenseRetriever(BiEncoder.load(model), FaissIndex.load(folder / "index"))
    queries = load_queries(data / "queries.jsonl")
    out = {}
    for split, qrels in run_splits(run, data).items():
        asked = [q for q in queries if q.id in qrels]
        out[split] = values_of(retriever.retrieve(asked, 100), qrels, MEASURES)
    return out


def minutes(folder: Path) -> float:
    """The training stage's time and a tuned teacher's dev scoring, in minutes."""
    stage = json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])
    teacher = folder / "teacher.json"
    extra = json.loads(teacher.read_text())["seconds"] if teacher.is_file() else 0.0
    return (stage["seconds"] + extra) / 60


def summarise(arms: dict[str, list[dict]], base: str) -> dict[str, Any]:
    """Means ± sd over seeds and pooled paired tests against ``base``."""
    from ar2.evaluate import compare

    result: dict[str, Any] = {}
    for split in SPLITS:
        for m in MEASURES:
            rows = {}
            for name, seeds in arms.items():
                means = [statistics.fmean(s[split][m].values()) for s in seeds]
                rows[name] = {"mean": statistics.fmean(means), "per_seed": means,
                              "sd": statistics.stdev(means) if len(means) > 1 else 0.0}  # fmt: skip
            pooled = {
                name: {
                    m: {f"{i}/{q}": x for i, s in enumerate(seeds) for q, x in s[split][m].items()}
                }
                for name, seeds in arms.items()
            }
            for t in compare(pooled, base, [m]):  # Holm over the arms
                rows[t["system"]] |= {
                    "diff": t["mean_diff"],
                    "p": t["p_value"],
                    "p_holm": t["p_holm"],
                }
            result[f"{split} {m}"] = rows
    return result


def markdown(result: dict[str, Any], base: str, times: dict[str, list[float]]) -> str:
    lines = []
    for key, rows in result.items():
        head = f"| arm | mean ± sd | per seed | − {base} (p, Holm) | minutes |"
        lines += [f"### {key}", "", head,
                  "|---|---:|---|---:|---:|"]  # fmt: skip
        for name, r in rows.items():
            test = f"{r['diff']:+.4f} ({r['p']:.2g}, {r['p_holm']:.2g})" if "diff" in r else ""
            seeds = ", ".join(f"{x:.4f}" for x in r["per_seed"])
            spent = f"{statistics.fmean(times[name]):.1f}" if name in times else ""
            lines.append(
                f"| {name} | {r['mean']:.4f} ± {r['sd']:.4f} | {seeds} | {test} | {spent} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arm", nargs="+", action="append", required=True,
                   metavar=("NAME", "FOLDER"), help="an arm's name, then its outputs")  # fmt: skip
    p.add_argument("--base", required=True, help="the arm every other is tested against")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = p.parse_args()
    folders = {arm[0]: [Path(f) for f in arm[1:]] for arm in args.arm}
    if args.base not in folders or len({len(f) for f in folders.values()}) != 1:
        p.error("--base must name an arm, and every arm needs one output per run")
    arms = {"run": [per_query(f, start=True) for f in folders[args.base]]}
    arms |= {name: [per_query(f) for f in fs] for name, fs in folders.items()}
    times = {name: [minutes(f) for f in fs] for name, fs in folders.items()}
    result = summarise(arms, args.base)
    named = {k: [str(f) for f in v] for k, v in folders.items()}
    record = {"folders": named, "minutes": times, "result": result}
    atomic_write_json(args.out.with_suffix(".json"), record)
    text = markdown(result, args.base, times)
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
