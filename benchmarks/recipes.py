"""Every recipe of ``ar2 train --recipe`` against AR2 on the same warm-ups, over seeds (issue 16).

Not a test. Each BASE is a finished ``ar2 train`` run of the ``ar2`` recipe, one per seed (its
``config.json`` gives the seed); it is the ``ar2`` row. Every other recipe copies that run's G0
and D0 (``ar2 train --warm-start``) and runs its own stages after them, with the base run's
settings, the recipe's (:mod:`ar2.train.recipes`) and ``--set`` over them: what differs is what
trains the retriever after G0. For each recipe: test nDCG@10 and R@100 of its delivered
retriever (``ar2-g``) and of that retriever reranked (``ar2-g+d``), mean ± sd over seeds; a
paired two-sided t-test against ``ar2`` over the per-query values of all seeds (query × seed
pairs), Holm-corrected over the table; and the measured seconds of what ran after the
warm-ups (``metrics.jsonl``: rounds, the ADORE stage, the dev measurements; the test
evaluation left out). Written to ``OUT/recipes.md`` and ``OUT/recipes.json``.

A recipe that ends in another artifact (``then``: ``repconc``, ``sparse``) is the ``ar2``
recipe's run followed by a command; its run is the base run itself, so only the command runs
here, over the base with the base's seed (``follow_up.run``, into ``OUT/seedS/NAME``, its
defaults: ``--set`` does not reach it). Its ``ar2-g`` row is the system it delivers (the
compressed index, the sparse retriever), from its ``per_query.tsv``; it has no ``ar2-g+d``
row; its minutes are the base's rounds plus the command's wall time
(``OUT/seedS/NAME.seconds.json``), marked ≥ where a command was resumed after a kill.

    .venv/bin/python benchmarks/recipes.py runs/q42 runs/q43 runs/q44 --out runs/recipes16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import ablations  # benchmarks/ablations.py: arms warm-started from the base runs

from ar2._io import atomic_write_text
from ar2.evaluate import compare
from ar2.train import follow_up
from ar2.train.follow_up import FOLLOW_UPS
from ar2.train.recipes import RECIPES, apply

MEASURES = ("nDCG@10", "R@100")
SYSTEMS = ("ar2-g", "ar2-g+d")
WARM_UPS = ("g0-train", "dev-g-0", "d0-train", "dev-gd-0")
"""The stages every recipe shares (copied from the base run): left out of its time."""


def after_warm_ups(run: Path) -> float:
    """Seconds of the run's stages after the warm-ups (``metrics.jsonl``)."""
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return sum(r["seconds"] for r in records if "seconds" in r and r["stage"] not in WARM_UPS)


def systems(name: str) -> dict[str, str]:
    """The recipe's rows (``ar2-g``, ``ar2-g+d``) and the system of its ``per_query.tsv``
    each reads: a follow-up's delivered system is its ``ar2-g``."""
    then = RECIPES[name].then
    return {"ar2-g": FOLLOW_UPS[then].system} if then else {s: s for s in SYSTEMS}


def means(runs: dict[int, Path], system: str, measure: str) -> list[float]:
    """The test mean of ``system`` on ``measure`` in each seed's run."""
    return [statistics.fmean(ablations.read_per_query(r)[system][measure].values())
            for r in runs.values()]  # fmt: skip


def pooled(runs: dict[int, Path], system: str, measure: str) -> dict[str, float]:
    """Per-query test values over every seed's run, keyed ``seed/query``."""
    return {f"{seed}/{qid}": value for seed, run in runs.items()
            for qid, value in ablations.read_per_query(run)[system][measure].items()}  # fmt: skip


def tests(runs: dict[str, dict[int, Path]]) -> dict[str, dict[str, Any]]:
    """Each recipe's system against ``ar2``'s, per measure, Holm over all rows."""
    per_q = {f"{name} {row}": {m: pooled(by_seed, system, m) for m in MEASURES}
             for name, by_seed in runs.items()
             for row, system in systems(name).items()}  # fmt: skip
    rows = []
    for row in SYSTEMS:
        subset = {key: values for key, values in per_q.items() if key.endswith(f" {row}")}
        rows += compare(subset, f"ar2 {row}", list(MEASURES))
    return {f"{row['system']} {row['measure']}": row for row in rows}


def follow_up_arm(base: Path, name: str, out: Path) -> tuple[Path, float, bool]:
    """Recipe ``name``'s command over ``base`` into ``out`` (resumed, or read when done); the
    folder, the command's wall seconds and whether they are a lower bound: a command resumed
    after a kill counts the longer of its last attempt's wall time and its training stages'
    seconds over every attempt (``metrics.jsonl``), since the killed attempt's other work
    (encoding, indexing) left no clock."""
    clock = out.with_name(f"{out.name}.seconds.json")
    if clock.is_file():
        record = json.loads(clock.read_text())
        return out, float(record["seconds"]), bool(record.get("resumed", False))
    seed = json.loads((base / "config.json").read_text())["seed"]
    resumed = out.exists()
    start = time.time()
    follow_up.run(RECIPES[name].then, base, seed, into=out)
    seconds = round(time.time() - start)
    if resumed:
        seconds = max(seconds, round(after_warm_ups(out)))
    atomic_write_text(clock, json.dumps({"seconds": seconds, "resumed": resumed}) + "\n")
    return out, seconds, resumed


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def table(
    runs: dict[str, dict[int, Path]], seconds: dict[str, list[float]], at_least: set[str]
) -> str:
    found = tests(runs)
    lines = [
        "| recipe | system | seeds | nDCG@10 | vs ar2 (p, Holm) | R@100 | vs ar2 (p, Holm) "
        "| minutes after the warm-ups |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for shown in SYSTEMS:
        for name, by_seed in runs.items():
            system = systems(name).get(shown)
            if system is None:
                continue
            cells = []
            for measure in MEASURES:
                row = found.get(f"{name} {shown} {measure}")
                test = (f"{row['mean_diff']:+.4f} ({row['p_value']:.2g}, {row['p_holm']:.2g})"
                        if row else "–")  # fmt: skip
                cells += [_mean_sd(means(by_seed, system, measure)), test]
            minutes = statistics.fmean(seconds[name]) / 60
            bound = "≥ " if name in at_least else ""
            label = shown if system == shown else f"{shown}: {system}"
            lines.append(f"| {name} | {label} | {len(by_seed)} | {' | '.join(cells)} | "
                         f"{bound}{minutes:.1f} |")  # fmt: skip
    papers = ["", "| recipe | paper | what trains the retriever after G0 |", "|---|---|---|"]
    papers += [f"| {n} | {r.paper} | {r.summary} |" for n, r in RECIPES.items() if n in runs]
    return "\n".join(lines + papers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bases", type=Path, nargs="+", help="finished `ar2 train` runs, one per seed")
    p.add_argument("--data", type=Path, default=Path("data/scifact"))
    p.add_argument("--out", type=Path, default=Path("runs/recipes"))
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names")
    p.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="a change to every recipe but ar2 (the base runs), as `ar2 train --set`",
    )  # fmt: skip
    args = p.parse_args()
    names = args.recipes.split(",")
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        p.error(f"unknown recipes {unknown}; choose from {', '.join(RECIPES)}")
    names = ["ar2", *(n for n in names if n != "ar2")]
    runs: dict[str, dict[int, Path]] = {n: {} for n in names}
    seconds: dict[str, list[float]] = {n: [] for n in names}
    at_least: set[str] = set()  # recipes whose minutes are a lower bound (a resumed command)
    for base in args.bases:  # seed by seed: a stopped study has whole seeds
        seed = json.loads((base / "config.json").read_text())["seed"]
        for name in names:
            out = args.out / f"seed{seed}" / name
            if RECIPES[name].then:
                runs[name][seed], spent, resumed = follow_up_arm(base, name, out)
                seconds[name].append(after_warm_ups(base) + spent)
                if resumed:
                    at_least.add(name)
                continue
            sets = [] if name == "ar2" else args.sets
            tables = None if name == "ar2" else apply(name, {})
            runs[name][seed], _ = ablations.run_arm(base, name, sets, args.data, out, tables)
            seconds[name].append(after_warm_ups(runs[name][seed]))
    text = table(runs, seconds, at_least)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "recipes.md", text + "\n")
    record = {"sets": args.sets, "seconds": seconds, "at_least": sorted(at_least),
              "runs": {n: {str(s): str(r) for s, r in by.items()} for n, by in runs.items()},
              "tests": tests(runs)}  # fmt: skip
    atomic_write_text(args.out / "recipes.json", json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
