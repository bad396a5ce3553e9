"""Ablations of AR2 at equal compute over seeds, warm-started from finished runs (issues 3, 14).

Not a test. Each BASE is a finished ``ar2 train`` run, one per seed (its ``config.json`` gives
the seed). Every arm copies that run's G0 and D0 (``ar2 train --warm-start``) and then runs the
same rounds, with the same retriever steps and documents per step (batch × (1 + n)), the
``--set`` changes applied to every arm:

- ``ar2``: the base run's own AR2 recipe; without ``--set`` the base run itself is this arm;
- ``ensemble``: AR2 with the ensemble teacher tuned on dev (``[teacher] kind = "ensemble"``);
- ``static``: G0's negatives throughout (no refresh), no ranker: in-batch + group cross-entropy;
- ``ance``: negatives re-mined every round, no ranker (ANCE-style control), same loss;
- ``lambda0``, ``lambda0.3``: the AR2 loss with λ = 0 (distillation only) and λ = 0.3;
- ``inbatch``: the AR2 loss plus the in-batch term (``in_batch = true``, our addition);
- ``kd``: the control's loss (in-batch + group cross-entropy) plus L_KD, no L_ADV
  (``in_batch = true``, λ = 0);
- ``margin_mse``, ``nway_kl``: AR2 with that distillation term;
- ``cosine``: AR2 with the ``"cosine"`` ranker head, its D0 retrained (150 steps at 3e-5).

Then, for ``ar2-g``, ``ar2-g+d`` and ``ar2-d`` (the ranker alone, where the reports have it;
test nDCG@10), each arm's mean ± sd over seeds, and its difference from ``--reference``
(default ``ar2``) by a paired two-sided t-test over the per-query values of all seeds (query ×
seed pairs), Holm-corrected over the table; the dev G of the last round is listed beside. A
second table tests each arm's ar2-g against its g0, the retriever the round started from.
Written to ``OUT/ablations.md`` and ``OUT/ablations.json``.

    .venv/bin/python benchmarks/ablations.py runs/presets13/new-seed42 runs/presets13/new-seed43 \\
        runs/presets13/new-seed44 --arms ar2,ensemble,ance --set retriever.steps=30 \\
        --out runs/teacher14
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path
from typing import Any

from ar2._io import atomic_write_text
from ar2._overrides import apply_overrides
from ar2.config import load_ar2_config
from ar2.evaluate import compare
from ar2.report import read_per_query as _read_per_query
from ar2.train.ar2 import run_ar2

NO_RANKER: dict[str, Any] = {"retriever_loss": "contrastive", "ranker": {"steps": 0}}
ARMS: dict[str, dict[str, Any]] = {
    "ar2": {},
    "ensemble": {"teacher": {"kind": "ensemble", "tune": True}},
    "static": NO_RANKER | {"refresh": False},
    "ance": NO_RANKER,
    "lambda0": {"adv_lambda": 0.0},
    "lambda0.3": {"adv_lambda": 0.3},
    "inbatch": {"in_batch": True},
    "kd": {"in_batch": True, "adv_lambda": 0.0},  # the control's cross-entropy + L_KD, no L_ADV
    "margin_mse": {"kd_loss": "margin_mse"},
    "nway_kl": {"kd_loss": "nway_kl"},
    "cosine": {
        "ranker_head": "cosine",
        "d0": {"steps": 150, "epochs": None, "lr": 3e-5, "head_lr": None},
    },
}
SYSTEMS = ("ar2-g", "ar2-g+d", "ar2-d")
"""The rows of the table; ``ar2-d`` (the ranker alone) where every run's report has it."""
MEASURE = "nDCG@10"
read_per_query = functools.cache(_read_per_query)  # each run's per_query.tsv, read once


def arm_config(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The base run's config with an arm's changes (tables merged key by key).

    Example:
        >>> arm_config({"rounds": 1, "ranker": {"steps": 5, "lr": 1.0}}, {"ranker": {"steps": 0}})
        {'rounds': 1, 'ranker': {'steps': 0, 'lr': 1.0}}
    """
    config = json.loads(json.dumps(base))
    for key, value in changes.items():
        config[key] = (config.get(key) or {}) | value if isinstance(value, dict) else value
    return config


def run_arm(
    base: Path, arm: str, sets: list[str], data: Path, out: Path,
    tables: dict[str, Any] | None = None,
) -> tuple[Path, float]:  # fmt: skip
    """The arm's run for ``base``'s seed (trained unless finished); its folder and seconds.
    ``tables``: the arm's settings (default: ``ARMS[arm]``)."""
    if arm == "ar2" and not sets:
        return base, 0.0
    if (out / "report.json").is_file():
        return out, 0.0
    base_cfg = json.loads((base / "config.json").read_text())
    base_cfg.pop("data", None)  # the run's data record, not a setting
    settings = ARMS[arm] if tables is None else tables
    cfg = load_ar2_config(apply_overrides(arm_config(base_cfg, settings), sets), arm)
    start = time.time()
    run_ar2(data, out, cfg, resume=out.exists(), warm_start_from=base)
    return out, round(time.time() - start)


def last_dev_g(run: Path) -> float:
    """The dev G of the run's last mining (``dev-g-R``)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    return [r for r in records if r["stage"].startswith("dev-g-")][-1]["dev"]["G"]


def pooled(runs: dict[int, Path], system: str) -> dict[str, float]:
    """Per-query test values of ``system`` over every seed's run, keyed ``seed/query``."""
    return {
        f"{seed}/{qid}": value
        for seed, run in runs.items()
        for qid, value in read_per_query(run)[system][MEASURE].items()
    }


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def reported(runs: dict[str, dict[int, Path]]) -> list[str]:
    """The :data:`SYSTEMS` that every run's report measured (older runs lack ``ar2-d``)."""
    paths = [run for by_seed in runs.values() for run in by_seed.values()]
    return [s for s in SYSTEMS if all(s in read_per_query(run) for run in paths)]


def against_g0(runs: dict[str, dict[int, Path]]) -> tuple[str, list[dict[str, Any]]]:
    """Each arm's ar2-g against its own g0 (the round's start), paired over query × seed."""
    lines = ["| arm | g0 mean | ar2-g mean | ar2-g − g0 | p |", "|---|---:|---:|---:|---:|"]
    rows = []
    for arm, by_seed in runs.items():
        per_q = {s: {MEASURE: pooled(by_seed, s)} for s in ("g0", "ar2-g")}
        row = compare(per_q, "g0", [MEASURE])[0] | {"arm": arm}
        g0, ar2 = (statistics.mean(per_q[s][MEASURE].values()) for s in ("g0", "ar2-g"))
        lines.append(f"| {arm} | {g0:.4f} | {ar2:.4f} | {row['mean_diff']:+.4f} | "
                     f"{row['p_value']:.3g} |")  # fmt: skip
        rows.append(row)
    return "\n".join(lines), rows


def table(runs: dict[str, dict[int, Path]], reference: str) -> tuple[str, list[dict[str, Any]]]:
    """The markdown table and the test rows: arms × systems against ``reference``."""
    systems = reported(runs)
    per_q = {f"{arm} {s}": {MEASURE: pooled(by_seed, s)} for arm, by_seed in runs.items()
             for s in systems}  # fmt: skip
    rows = []
    for system in systems:
        subset = {f"{arm} {system}": per_q[f"{arm} {system}"] for arm in runs}
        rows += compare(subset, f"{reference} {system}", [MEASURE])
    tests = {row["system"]: row for row in rows}
    lines = [
        f"| arm | system | seeds | test {MEASURE} mean ± sd | diff vs {reference} | p | p (Holm) "
        "| dev G (last round), mean |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for system in systems:
        for arm, by_seed in runs.items():
            means = [
                statistics.mean(read_per_query(r)[system][MEASURE].values())
                for r in by_seed.values()
            ]
            dev = statistics.mean(last_dev_g(r) for r in by_seed.values())
            row = tests.get(f"{arm} {system}")
            diff = f"{row['mean_diff']:+.4f} | {row['p_value']:.3g} | {row['p_holm']:.3g}" if row \
                else "– | – | –"  # fmt: skip
            lines.append(
                f"| {arm} | {system} | {len(means)} | {_mean_sd(means)} | {diff} | {dev:.4f} |"
            )
    return "\n".join(lines), rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bases", type=Path, nargs="+", help="finished `ar2 train` runs, one per seed")
    p.add_argument("--data", type=Path, default=Path("data/scifact"))
    p.add_argument("--out", type=Path, default=Path("runs/ablations"))
    p.add_argument("--arms", default="ar2,static,ance,lambda0,lambda0.3,inbatch")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a change to every arm, as `ar2 train --set`")  # fmt: skip
    p.add_argument("--reference", default="ar2", help="the arm the others are tested against")
    args = p.parse_args()
    arms = args.arms.split(",")
    unknown = sorted(set(arms + [args.reference]) - set(ARMS))
    if unknown:
        p.error(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
    if args.reference not in arms:
        arms.insert(0, args.reference)
    runs: dict[str, dict[int, Path]] = {arm: {} for arm in arms}
    seconds: dict[str, float] = {}
    for base in args.bases:  # seed by seed: a stopped study has whole seeds
        seed = json.loads((base / "config.json").read_text())["seed"]
        for arm in arms:
            out = args.out / f"seed{seed}" / arm
            runs[arm][seed], seconds[f"{arm}/seed{seed}"] = run_arm(
                base, arm, args.sets, args.data, out
            )
    text, rows = table(runs, args.reference)
    g0_text, g0_rows = against_g0(runs)
    text += "\n\nEach arm's round against its start (test, pooled over seeds):\n\n" + g0_text
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "ablations.md", text + "\n")
    record = {"sets": args.sets, "runs": {a: {str(s): str(r) for s, r in by.items()}
              for a, by in runs.items()}, "rows": rows, "against_g0": g0_rows,
              "seconds": seconds}  # fmt: skip
    atomic_write_text(args.out / "ablations.json", json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
