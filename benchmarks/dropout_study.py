"""What the dropout settings cost in quality: G0's dev nDCG@10 per arm, over seeds, paired.

Not a test. For each seed and arm it runs the first stage of ``ar2 train`` as the run does it
(the preset's G0, the round-0 index refresh and the dev evaluation: ``dev-g-0`` in
``metrics.jsonl``) with the arm's settings, in ``OUT/ARM-seedS`` (resumable: a finished pair is
skipped, a killed one continues). G0 is most of a ``quick`` run and all of the retriever's
training before the rounds. Arms:

- ``model``: the model's own dropout (0.1 everywhere for MiniLM), torch's masks: the presets
  before issue 13;
- ``fast``: attention dropout 0 and ``fast_dropout`` masks elsewhere (the presets since);
- ``none``: no dropout at all (the upper bound on speed).

It prints, per arm, each seed's dev nDCG@10 and G0 time, and for each arm against ``model``:
each seed's difference with a paired t-test over that seed's dev queries (the dev split is
drawn with the seed, so seeds do not share dev queries), and the mean difference over seeds
with a paired t-test over the seeds. G0 times include any time the process was paused. Usage:

    .venv/bin/python benchmarks/dropout_study.py --out runs/dropout-study --seeds 42 43 44
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from ar2._io import atomic_write_json, atomic_write_text

ARMS: dict[str, dict[str, Any]] = {
    "model": {"attention_dropout": None, "fast_dropout": False},
    "fast": {"attention_dropout": 0.0, "fast_dropout": True},
    "none": {"attention_dropout": 0.0, "fast_dropout": False, "hidden_dropout": 0.0},
}
MEASURE = "nDCG@10"


def run_g0(data: Path, out: Path, preset: str, seed: int, arm: dict[str, Any]) -> dict[str, Any]:
    """G0 + the round-0 refresh and dev evaluation of one arm and seed, as ``ar2 train`` runs
    them; returns the dev figure, G0's seconds and the per-query dev values."""
    from ar2.config import load_ar2_config, load_config_file, preset_path
    from ar2.data.trec import read_run
    from ar2.evaluate import per_query
    from ar2.train.ar2 import _warmup_retriever
    from ar2.train.data import load_train_data
    from ar2.train.rounds import mine_round
    from ar2.train.run_config import for_collection
    from ar2.train.stage import MetricsLog, RunContext

    settings = load_config_file(preset_path(preset)) | {"seed": seed}
    settings |= {k: v for k, v in arm.items() if k != "hidden_dropout"}
    cfg = load_ar2_config(settings, preset)
    out.mkdir(parents=True, exist_ok=True)  # the study's own folder
    train = load_train_data(data, cfg.dev_queries, cfg.seed, out, cfg.dev_fraction)
    cfg, _ = for_collection(cfg, len(train.train))
    ctx = RunContext(out, train, cfg, MetricsLog(out / "metrics.jsonl"))
    undo = _no_dropout_loads(arm["hidden_dropout"]) if "hidden_dropout" in arm else None
    try:
        retriever = _warmup_retriever(ctx)
        mine_round(ctx, 0, retriever, None)
    finally:
        if undo is not None:
            undo()
    records = {r["stage"]: r for r in ctx.metrics.records}
    run = read_run(out / "dev_runs" / "round-0.trec")
    values = per_query(run, train.dev_qrels, [MEASURE])[MEASURE]
    return {
        "dev": records["dev-g-0"]["dev"]["G"],
        "g0_seconds": records["g0-train"].get("seconds"),
        "per_query": values,
    }


def _no_dropout_loads(rate: float) -> Any:
    """Every model load until the returned function is called gets dropout ``rate`` (the
    ``none`` arm)."""
    from ar2.encoders import _hf

    original = _hf.load_tokenizer_and_model

    def load(path: Any, *args: Any, **kwargs: Any) -> Any:
        tokenizer, model = original(path, *args, **kwargs)
        for module in model.modules():
            if type(module).__name__ == "Dropout":
                module.p = rate
        return tokenizer, model

    _hf.load_tokenizer_and_model = load  # type: ignore[assignment]

    def undo() -> None:
        _hf.load_tokenizer_and_model = original  # type: ignore[assignment]

    return undo


def summarise(results: dict[str, dict[int, dict[str, Any]]]) -> str:
    from scipy import stats

    lines = [f"| arm | seed | dev {MEASURE} (G0) | G0 minutes |", "|---|---:|---:|---:|"]
    for arm, by_seed in results.items():
        for seed, r in sorted(by_seed.items()):
            minutes = (r["g0_seconds"] or 0) / 60
            lines.append(f"| {arm} | {seed} | {r['dev']:.4f} | {minutes:.1f} |")
    lines += ["", "| arm vs model | seed | dev diff | p (paired t over this seed's dev queries) |",
              "|---|---:|---:|---:|"]  # fmt: skip
    base = results.get("model", {})
    summary = []
    for arm, by_seed in results.items():
        seeds = sorted(set(by_seed) & set(base))
        if arm == "model" or not seeds:
            continue
        for s in seeds:
            shared = sorted(base[s]["per_query"].keys() & by_seed[s]["per_query"].keys())
            ours = [by_seed[s]["per_query"][q] for q in shared]
            theirs = [base[s]["per_query"][q] for q in shared]
            p_queries = stats.ttest_rel(ours, theirs).pvalue
            lines.append(f"| {arm} | {s} | {by_seed[s]['dev'] - base[s]['dev']:+.4f} | "
                         f"{p_queries:.3f} |")  # fmt: skip
        ours, theirs = [by_seed[s]["dev"] for s in seeds], [base[s]["dev"] for s in seeds]
        p_seeds = stats.ttest_rel(ours, theirs).pvalue if len(seeds) > 1 else float("nan")
        diff = statistics.mean(a - b for a, b in zip(ours, theirs))
        summary.append(f"| {arm} | {len(seeds)} | {diff:+.4f} | {p_seeds:.3f} |")
    lines += ["", "| arm vs model | seeds | mean dev diff | p (paired t over seeds) |",
              "|---|---:|---:|---:|", *summary]  # fmt: skip
    return "\n".join(lines)


STUDY_FILES = {"study.md", "study.tsv"}


def _is_arm_folder(name: str) -> bool:
    """``ARM-seedN``, the name :func:`main` gives an arm's folder."""
    arm, sep, seed = name.rpartition("-seed")
    return bool(sep) and arm in ARMS and seed.isdigit()


def _check_out(out: Path) -> None:
    """Refuse a folder holding anything this study did not write (nothing is overwritten)."""
    if not out.is_dir():
        return
    foreign = [
        p.name
        for p in out.iterdir()
        if p.name not in STUDY_FILES and not (p.is_dir() and _is_arm_folder(p.name))
    ]
    if foreign:
        raise SystemExit(
            f"dropout_study.py: error: {out} holds {sorted(foreign)[:3]}, which this study did not "
            "write. Fix: pass a new or empty --out"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/scifact"))
    p.add_argument("--out", type=Path, default=Path("runs/dropout-study"))
    p.add_argument("--preset", default="quick")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--arms", nargs="+", default=["model", "fast"], choices=list(ARMS))
    args = p.parse_args()
    _check_out(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in args.arms}
    for seed in args.seeds:  # seeds outermost: an interrupted study still has whole pairs
        for arm in args.arms:
            folder = args.out / f"{arm}-seed{seed}"
            done = folder / "study.json"
            if not done.is_file():
                began = time.time()
                found = run_g0(args.data, folder, args.preset, seed, ARMS[arm])
                found["wall_seconds"] = round(time.time() - began, 1)
                atomic_write_json(done, found)
            results[arm][seed] = json.loads(done.read_text(encoding="utf-8"))
            print(f"{arm} seed {seed}: dev {results[arm][seed]['dev']:.4f}", flush=True)
    table = summarise(results)
    atomic_write_text(args.out / "study.md", table + "\n")
    rows = [f"{arm}\t{seed}\t{r['dev']}\t{r['g0_seconds']}\n"
            for arm, by_seed in results.items() for seed, r in by_seed.items()]  # fmt: skip
    atomic_write_text(args.out / "study.tsv", "".join(rows))
    print(table)


if __name__ == "__main__":
    main()
