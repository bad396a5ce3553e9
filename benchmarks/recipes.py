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

Each arm's result (its rows' per-query test values, minutes, CPU and date) is kept in
``--keep`` (``benchmarks/results/recipes/seedS-FINGERPRINT/NAME.json``, committed), keyed by the
base run's :func:`fingerprint`: an arm kept there is read back instead of trained, on any
machine, and the folder itself can stand for its base once the run is gone, so a table grows
seed by seed over sessions that each keep only part of it. A rebuilt base that scores
differently is another base: its arms are measured anew and never mixed with the old ones.

    .venv/bin/python benchmarks/recipes.py runs/q42 runs/q43 runs/q44 --out runs/recipes16
    .venv/bin/python benchmarks/recipes.py benchmarks/results/recipes/seed42-* --recipes repconc
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

import ablations  # benchmarks/ablations.py: arms warm-started from the base runs
from machine import accelerator_label, cpu_label  # benchmarks/machine.py

from ar2._io import atomic_write_text
from ar2.evaluate import compare, holm
from ar2.report import per_query_file
from ar2.train import follow_up
from ar2.train.follow_up import FOLLOW_UPS
from ar2.train.recipes import RECIPES, apply

MEASURES = ("nDCG@10", "R@100")
SYSTEMS = ("ar2-g", "ar2-g+d")
WARM_UPS = ("g0-train", "dev-g-0", "d0-train", "dev-gd-0")
"""The stages every recipe shares (copied from the base run): left out of its time."""
KEEP = Path(__file__).parent / "results" / "recipes"
"""Where each arm's result is kept: in the repository, since a machine and its runs can go."""


def after_warm_ups(run: Path) -> float:
    """Seconds of the run's stages after the warm-ups (``metrics.jsonl``)."""
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return sum(r["seconds"] for r in records if "seconds" in r and r["stage"] not in WARM_UPS)


def systems(name: str) -> dict[str, str]:
    """The recipe's rows (``ar2-g``, ``ar2-g+d``) and the system of its ``per_query.tsv``
    each reads: a follow-up's delivered system is its ``ar2-g``."""
    then = RECIPES[name].then
    return {"ar2-g": FOLLOW_UPS[then].system} if then else {s: s for s in SYSTEMS}


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


def fingerprint(base: Path) -> str:
    """A base run's identity: the first 12 hex digits of the sha256 of its test
    ``per_query.tsv``. Two builds of one seed that score every query alike (the same machine
    kind and precision) share it, and so share their kept arms; any other build is another
    base, whose arms are measured anew."""
    return hashlib.sha256((base / per_query_file("test")).read_bytes()).hexdigest()[:12]


def kept_name(name: str, sets: list[str]) -> str:
    """The file of recipe ``name``'s kept result; ``--set`` changes give it a suffix of their
    own, so a study with other settings never reads or replaces the defaults' results.

    Example:
        >>> kept_name("star", []), kept_name("ar2", ["retriever.steps=100"])
        ('star.json', 'ar2.json')
        >>> kept_name("star", ["retriever.steps=100"]), kept_name("repconc", ["x=1"])
        ('star+8d6d5aa4.json', 'repconc.json')
    """
    if name == "ar2" or not sets or RECIPES[name].then:  # --set reaches no follow-up
        return f"{name}.json"
    return f"{name}+{hashlib.sha256(json.dumps(sets).encode()).hexdigest()[:8]}.json"


def result(name: str, folder: Path, seconds: float, at_least: bool, sets: list[str]) -> dict:
    """What the table reads of one recipe's arm on one base: its rows' per-query test values,
    its minutes, and where and when it ran; small enough to keep in the repository."""
    read = ablations.read_per_query(folder)
    values = {
        row: {
            m: {q: round(v, 6) for q, v in read[system][m].items()}
            for m in MEASURES
            if m in read[system]
        }
        for row, system in systems(name).items()
    }  # fmt: skip  (a follow-up: nDCG@10 only)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return {"recipe": name, "sets": sets if kept_name(name, sets) != f"{name}.json" else [],
            "seconds": seconds, "at_least": at_least, "cpu": cpu_label(),
            "accelerator": accelerator_label(), "date": date,
            "per_query": values}  # fmt: skip


def measure(base: Path, name: str, out: Path, sets: list[str], data: Path) -> dict:
    """Recipe ``name``'s arm on ``base`` (trained, resumed or read from ``out``), as a
    :func:`result`."""
    if RECIPES[name].then:
        folder, spent, resumed = follow_up_arm(base, name, out)
        return result(name, folder, after_warm_ups(base) + spent, resumed, sets)
    tables = None if name == "ar2" else apply(name, {})
    folder, _ = ablations.run_arm(base, name, [] if name == "ar2" else sets, data, out, tables)
    return result(name, folder, after_warm_ups(folder), False, sets)


def identify(base: Path, keep: Path) -> tuple[int, Path, Path | None]:
    """A positional argument's seed, its folder of kept results and the run to train arms
    from: a finished run (``config.json``, a test report) or a folder of kept results
    (``ar2.json``) whose run is gone."""
    if (base / "ar2.json").is_file():
        return int(json.loads((base / "ar2.json").read_text())["seed"]), base, None
    if not (base / per_query_file("test")).is_file():
        raise SystemExit(f"{base}: not a finished run (no {per_query_file('test')}) nor a "
                         "folder of kept results (no ar2.json); pass `ar2 train`'s "
                         "output")  # fmt: skip
    seed = int(json.loads((base / "config.json").read_text())["seed"])
    return seed, keep / f"seed{seed}-{fingerprint(base)}", base


def collect(args: argparse.Namespace, names: list[str]) -> dict[str, dict[int, dict]]:
    """Every recipe's result on every base, seed by seed (a stopped study has whole seeds):
    read from the kept folder where it is there, else measured and kept at once."""
    found: dict[str, dict[int, dict]] = {n: {} for n in names}
    for base in args.bases:
        seed, kept, run = identify(base, args.keep)
        if any(seed in by_seed for by_seed in found.values()):
            raise SystemExit(f"{base}: a second base of seed {seed}; pass one base per seed")
        for name in names:
            path = kept / kept_name(name, args.sets)
            if path.is_file():
                found[name][seed] = json.loads(path.read_text()) | {"kept": str(path)}
                continue
            if run is None:
                raise SystemExit(f"{path}: not kept, and {kept} holds no run to train it "
                                 f"from; pass the finished run of seed {seed} instead")  # fmt: skip
            record = measure(run, name, args.out / f"seed{seed}" / name, args.sets, args.data)
            record["seed"] = seed
            kept.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(record, indent=1) + "\n")
            found[name][seed] = record | {"kept": str(path)}
    return found


def pooled(by_seed: dict[int, dict], row: str, measure: str) -> dict[str, float]:
    """Per-query test values of ``row`` over every seed, keyed ``seed/query``."""
    return {f"{seed}/{qid}": value for seed, record in by_seed.items()
            for qid, value in record["per_query"][row][measure].items()}  # fmt: skip


def tests(found: dict[str, dict[int, dict]]) -> dict[str, dict[str, Any]]:
    """Each recipe's rows against ``ar2``'s over the seeds the recipe has (query × seed
    pairs), per measure; Holm over the whole table."""
    rows = []
    for name, by_seed in found.items():
        for row in systems(name) if name != "ar2" else ():
            base = {s: r for s, r in found["ar2"].items() if s in by_seed}
            measured = [m for m in MEASURES if _measured(by_seed, row, m)]
            pair = {f"{name} {row}": {m: pooled(by_seed, row, m) for m in measured},
                    f"ar2 {row}": {m: pooled(base, row, m) for m in measured}}  # fmt: skip
            rows += compare(pair, f"ar2 {row}", measured)
    return {f"{r['system']} {r['measure']}": r for r in holm(rows)}


def _measured(by_seed: dict[int, dict], row: str, measure: str) -> bool:
    """Whether every seed's arm has ``measure`` for ``row`` (a follow-up has nDCG@10 only)."""
    return all(measure in r["per_query"][row] for r in by_seed.values())


def _machine(record: dict) -> str:
    """Where an arm ran: its GPU where it had one (results kept before this field: the CPU)."""
    gpu = record.get("accelerator", "none")
    return record["cpu"] if gpu == "none" else f"{gpu} on {record['cpu']}"


def _mean_sd(by_seed: dict[int, dict], row: str, measure: str) -> str:
    if not _measured(by_seed, row, measure):
        return "–"
    values = [statistics.fmean(r["per_query"][row][measure].values()) for r in by_seed.values()]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def table(found: dict[str, dict[int, dict]]) -> str:
    """The comparison in Markdown: one line per recipe and row, then the papers and the bases."""
    checked = tests(found)
    lines = [
        "| recipe | system | seeds | nDCG@10 | vs ar2 (p, Holm) | R@100 | vs ar2 (p, Holm) "
        "| minutes after the warm-ups |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for shown in SYSTEMS:
        for name, by_seed in found.items():
            system = systems(name).get(shown)
            if system is None or not by_seed:
                continue
            cells = []
            for m in MEASURES:
                row = checked.get(f"{name} {shown} {m}")
                test = (f"{row['mean_diff']:+.4f} ({row['p_value']:.2g}, {row['p_holm']:.2g})"
                        if row else "–")  # fmt: skip
                cells += [_mean_sd(by_seed, shown, m), test]
            records = list(by_seed.values())
            minutes = statistics.fmean(r["seconds"] for r in records) / 60
            bound = "≥ " if any(r["at_least"] for r in records) else ""
            label = shown if system == shown else f"{shown}: {system}"
            seeds = ",".join(str(s) for s in sorted(by_seed))
            lines.append(f"| {name} | {label} | {seeds} | {' | '.join(cells)} | "
                         f"{bound}{minutes:.1f} |")  # fmt: skip
    papers = ["", "| recipe | paper | what trains the retriever after G0 |", "|---|---|---|"]
    papers += [f"| {n} | {r.paper} | {r.summary} |" for n, r in RECIPES.items() if found.get(n)]
    bases = ["", "Bases (the ar2 row's runs):"]
    bases += [f"- seed {s}: {_machine(r)}, {r['date']}" for s, r in sorted(found["ar2"].items())]
    return "\n".join(lines + papers + bases)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "bases", type=Path, nargs="+",
        help="finished `ar2 train` runs, one per seed, or their kept folders",
    )  # fmt: skip
    p.add_argument("--data", type=Path, default=Path("data/scifact"))
    p.add_argument("--out", type=Path, default=Path("runs/recipes"))
    p.add_argument(
        "--keep", type=Path, default=KEEP,
        help="where each arm's result is kept and read back (default: %(default)s)",
    )  # fmt: skip
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
    found = collect(args, ["ar2", *(n for n in names if n != "ar2")])
    text = table(found)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "recipes.md", text + "\n")
    record = {
        "sets": args.sets,
        "tests": tests(found),
        "kept": {n: {str(s): r["kept"] for s, r in by.items()} for n, by in found.items()},
    }
    atomic_write_text(args.out / "recipes.json", json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
