"""Ablations of AR2 at equal compute, warm-started from a finished AR2 run (issue 3 §7).

Not a test. Every arm copies the base run's G0 and D0 (``ar2 train --warm-start``) and then runs
the same rounds with the same retriever steps and the same documents per step (batch × (1 + n)):

- ``static``: G0's negatives throughout (no refresh), no ranker: in-batch + group cross-entropy;
- ``ance``: negatives re-mined every round, no ranker (ANCE-style control), same loss;
- ``lambda0``, ``lambda0.3``: the AR2 loss with λ = 0 (distillation only) and λ = 0.3;
- ``inbatch``: the AR2 loss plus the in-batch term (``in_batch = true``, our addition);
- the base run itself is the AR2 arm (its λ, usually 0.5).

Then each arm's test nDCG@10 (``ar2-g`` and ``ar2-g+d``) is compared with the base run's by a
paired two-sided t-test over the test queries (Holm-corrected), and a table is printed and
written to ``OUT/ablations.md`` and ``OUT/ablations.json``. Usage:

    .venv/bin/python benchmarks/ablations.py RUN_DIR --data data/scifact --out runs/ablations \\
        [--arms static,ance,lambda0,lambda0.3,inbatch]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ar2.config import load_ar2_config
from ar2.evaluate import compare
from ar2.report import read_per_query
from ar2.train.ar2 import run_ar2

NO_RANKER: dict[str, Any] = {"retriever_loss": "contrastive", "ranker": {"steps": 0}}
ARMS: dict[str, dict[str, Any]] = {
    "static": NO_RANKER | {"refresh": False},
    "ance": NO_RANKER,
    "lambda0": {"adv_lambda": 0.0},
    "lambda0.3": {"adv_lambda": 0.3},
    "inbatch": {"in_batch": True},
}
MEASURE = "nDCG@10"


def arm_config(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The base run's config with an arm's changes (stage tables merged key by key)."""
    config = json.loads(json.dumps(base))
    for key, value in changes.items():
        config[key] = config[key] | value if isinstance(value, dict) else value
    return config


def per_query(run: Path, system: str) -> dict[str, float]:
    return read_per_query(run)[system][MEASURE]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", type=Path, help="a finished `ar2 train` run: the AR2 arm")
    p.add_argument("--data", type=Path, default=Path("data/scifact"))
    p.add_argument("--out", type=Path, default=Path("runs/ablations"))
    p.add_argument("--arms", default=",".join(ARMS))
    args = p.parse_args()
    base_cfg = json.loads((args.base / "config.json").read_text())
    base_cfg.pop("data", None)  # the run's data record, not a setting
    arms = args.arms.split(",")
    timings = {}
    for arm in arms:
        out = args.out / arm
        if not (out / "report.json").is_file():
            cfg = load_ar2_config(arm_config(base_cfg, ARMS[arm]), arm)
            start = time.time()
            run_ar2(args.data, out, cfg, resume=out.exists(), warm_start_from=args.base)
            timings[arm] = round(time.time() - start)
    per_q: dict[str, dict[str, dict[str, float]]] = {}
    for system in ("ar2-g", "ar2-g+d"):
        per_q[f"ar2 {system}"] = {MEASURE: per_query(args.base, system)}
        for arm in arms:
            per_q[f"{arm} {system}"] = {MEASURE: per_query(args.out / arm, system)}
    rows = []
    for system in ("ar2-g", "ar2-g+d"):
        names = [f"ar2 {system}"] + [f"{arm} {system}" for arm in arms]
        subset = {n: per_q[n] for n in names}
        for row in compare(subset, f"ar2 {system}", [MEASURE]):
            rows.append(row)
    lines = ["| arm | system | nDCG@10 | AR2 | diff | p (Holm) |", "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        arm, system = row["system"].split(" ", 1)
        value = sum(per_q[row["system"]][MEASURE].values()) / len(per_q[row["system"]][MEASURE])
        lines.append(
            f"| {arm} | {system} | {value:.4f} | {value - row['mean_diff']:.4f} "
            f"| {row['mean_diff']:+.4f} | {row['p_holm']:.3g} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablations.md").write_text(table + "\n")
    (args.out / "ablations.json").write_text(
        json.dumps({"rows": rows, "seconds": timings}, indent=1)
    )


if __name__ == "__main__":
    main()
