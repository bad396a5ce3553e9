"""Two versions of a preset over seeds: their SciFact test figures, paired (issue 13 §3).

Not a test. Each arm is a list of finished ``ar2 train`` runs, one per seed (the seed is read
from each run's ``config.json``). For every system of the report (``g0``, ``ar2-g``,
``ar2-g+d``) it prints each run's test nDCG@10, each arm's mean ± sd over seeds, and the
difference of the second arm from the first:

- over seeds: a paired t-test of the per-seed means (the rule for calling a difference real);
- within each seed: a paired t-test over the test queries (how large one seed's noise is).

Times are not compared here (a warm-started run did not train its G0). Usage:

    .venv/bin/python benchmarks/preset_seeds.py \\
        --arm old=runs/quick,runs/presets13/old-seed43,runs/presets13/old-seed44 \\
        --arm new=runs/presets13/new-seed42,runs/presets13/new-seed43,runs/presets13/new-seed44 \\
        [--out runs/presets13/compare.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from ar2._io import atomic_write_text
from ar2.evaluate import compare as paired_tests
from ar2.report import read_per_query

SYSTEMS = ("g0", "ar2-g", "ar2-g+d")
MEASURE = "nDCG@10"


def read_run(run: Path) -> dict[str, Any]:
    """A finished run's seed, test figures and per-query values."""
    config = json.loads((run / "config.json").read_text())
    report = json.loads((run / "report.json").read_text())
    values = read_per_query(run)
    return {
        "seed": config["seed"],
        "test": {s: report[s][MEASURE] for s in SYSTEMS},
        "per_query": {s: values[s][MEASURE] for s in SYSTEMS},
    }


def compare(arms: dict[str, list[Path]]) -> str:
    """The markdown tables: runs, means, and the second arm against the first."""
    from scipy import stats

    runs = {arm: {r["seed"]: r for r in map(read_run, paths)} for arm, paths in arms.items()}
    lines = [f"| arm | seed | {' | '.join(SYSTEMS)} |", "|---|---:|" + "---:|" * len(SYSTEMS)]
    for arm, by_seed in runs.items():
        for seed, r in sorted(by_seed.items()):
            values = " | ".join(f"{r['test'][s]:.4f}" for s in SYSTEMS)
            lines.append(f"| {arm} | {seed} | {values} |")
        means = [_mean_sd([r["test"][s] for r in by_seed.values()]) for s in SYSTEMS]
        lines.append(f"| {arm} | mean ± sd | {' | '.join(means)} |")
    (first, base), (second, other) = list(runs.items())[:2]
    seeds = sorted(base.keys() & other.keys())
    lines += ["", f"| system | {second} − {first} per seed ({', '.join(map(str, seeds))}) | "
              "p within each seed (paired t over test queries) | mean diff | p over seeds "
              "(paired t) |", "|---|---|---|---:|---:|"]  # fmt: skip
    for s in SYSTEMS:
        diffs = [other[k]["test"][s] - base[k]["test"][s] for k in seeds]
        within = [_paired_p(base[k]["per_query"][s], other[k]["per_query"][s]) for k in seeds]
        over = stats.ttest_rel([other[k]["test"][s] for k in seeds],
                               [base[k]["test"][s] for k in seeds]).pvalue  # fmt: skip
        lines.append(f"| {s} | {', '.join(f'{d:+.4f}' for d in diffs)} | "
                     f"{', '.join(f'{p:.2f}' for p in within)} | "
                     f"{statistics.mean(diffs):+.4f} | {over:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _paired_p(a: dict[str, float], b: dict[str, float]) -> float:
    """p of a paired t-test of ``b`` against ``a`` over their queries (ar2's own test)."""
    return float(paired_tests({"a": {MEASURE: a}, "b": {MEASURE: b}}, "a", [MEASURE])[0]["p_value"])


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arm", action="append", required=True, metavar="NAME=RUN,RUN,...",
                   help="an arm's runs, one per seed; the first arm is the baseline")  # fmt: skip
    p.add_argument("--out", type=Path, help="also write the tables here (markdown)")
    args = p.parse_args()
    arms: dict[str, list[Path]] = {}
    for item in args.arm:
        name, _, paths = item.partition("=")
        arms[name] = [Path(x) for x in paths.split(",") if x]
    if len(arms) < 2:
        p.error("give two arms: --arm old=RUN,... --arm new=RUN,...")
    text = compare(arms)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
