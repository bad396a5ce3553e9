"""The ranker alone against its retriever at several rerank depths, on dev and test (issue 14).

Not a test. Issue 14 asks that the ranker alone, reordering the retriever's top 100 (fusion
weight 1), score at least the retriever alone. A run's report measures the ranker alone at its
``rerank_k`` only (20 in the presets). For each finished ``ar2 train`` RUN (one per seed):

- dev: the run of the delivered round's retriever on the held-out dev queries
  (``dev_runs/round-R.trec``, R the round ``deliver`` chose, 100 deep); a run that delivers
  an average of rounds (``average_rounds > 1``) keeps no such run and is refused;
- test: the delivered index (``RUN/index``) searched for the test queries, 100 deep
  (``--splits dev`` skips it: about 30,000 pairs to score per run).

The delivered ranker (``RUN/ranker``) scores each query's top ``max(depths)`` once; a smaller
depth reuses those scores (the ranker scores each pair alone). For each depth: nDCG@10 of the
retriever's order and of the top K reordered by the ranker alone, each the mean over seeds, and
a paired two-sided t-test over the per-query values of all seeds (query × seed pairs).

    .venv/bin/python benchmarks/ranker_depth.py runs/teacher14b/seed42/ar2 \\
        runs/teacher14b/seed43/ar2 runs/teacher14b/seed44/ar2 --out runs/teacher14b/depth
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from ar2._io import atomic_write_text
from ar2.config import load_ar2_config
from ar2.data.beir import load_beir
from ar2.data.trec import read_run
from ar2.encoders import CrossEncoder
from ar2.evaluate import compare, per_query
from ar2.fusion import fused_run
from ar2.pipeline import CrossEncoderRanker
from ar2.retrievers import dense_from_folder
from ar2.train.ar2 import delivered_round
from ar2.train.run_config import read_run_config
from ar2.train.stage import MetricsLog
from ar2.types import Doc, Qrels, Query, Run

MEASURE = "nDCG@10"


def delivered(run: Path) -> int:
    """The round whose retriever and ranker ``run`` delivered (:func:`delivered_round`)."""
    saved = read_run_config(run / "config.json")
    saved.pop("data", None)  # the run's data record, not a setting
    cfg = load_ar2_config(saved, str(run))
    if cfg.average_rounds > 1:
        raise SystemExit(f"{run}: delivers an average of rounds, whose dev run is not kept")
    return delivered_round(MetricsLog(run / "metrics.jsonl").records, cfg)


def split_inputs(run: Path, data: Path, split: str) -> tuple[list[Doc], list[Query], Qrels, Run]:
    """The corpus, the split's queries and qrels, and the delivered retriever's run of them
    (100 deep)."""
    if split == "dev":
        docs, queries, qrels = load_beir(data, "train")
        ids = set(json.loads((run / "dev_split.json").read_text())["queries"])
        dev = read_run(run / "dev_runs" / f"round-{delivered(run)}.trec")
        return docs, [q for q in queries if q.id in ids], {q: qrels[q] for q in ids}, dev
    docs, queries, qrels = load_beir(data, split)
    queries = [q for q in queries if q.id in qrels]
    return docs, queries, qrels, dense_from_folder(run / "index").retrieve(queries, 100)


def depth_runs(
    ranker: CrossEncoderRanker, queries: list[Query], retrieved: Run, depths: list[int]
) -> dict[str, Run]:
    """``retriever`` and ``ranker@K`` (the top K by the ranker alone, the rest after) runs."""
    runs: dict[str, Run] = {"retriever": retrieved}
    deepest = max(depths)
    scored = {q.id: ranker.scores(q, retrieved[q.id][:deepest]) for q in queries}
    for k in depths:
        head = {q: (retrieved[q][:k], scores[:k]) for q, scores in scored.items()}
        runs[f"ranker@{k}"] = fused_run(head, retrieved, 1.0)
    return runs


def measure_run(
    run: Path, data: Path, split: str, depths: list[int]
) -> dict[str, dict[str, float]]:
    """``system -> query -> nDCG@10`` for one run on one split."""
    docs, queries, qrels, retrieved = split_inputs(run, data, split)
    ranker = CrossEncoderRanker(CrossEncoder.load(run / "ranker"), {d.id: d for d in docs})
    return {
        system: per_query(ranked, qrels, [MEASURE])[MEASURE]
        for system, ranked in depth_runs(ranker, queries, retrieved, depths).items()
    }


def table(values: dict[str, dict[int, dict[str, dict[str, float]]]]) -> tuple[str, list[Any]]:
    """Markdown rows: split × depth, retriever and ranker means, the paired test."""
    lines = ["| split | depth | retriever | ranker alone | ranker − retriever | p |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    rows = []
    for split, by_seed in values.items():
        systems = next(iter(by_seed.values()))
        pooled = {s: {MEASURE: {f"{seed}/{q}": v for seed, per in by_seed.items()
                                for q, v in per[s].items()}} for s in systems}  # fmt: skip
        for system in (s for s in systems if s != "retriever"):
            row = compare({s: pooled[s] for s in ("retriever", system)}, "retriever", [MEASURE])[0]
            means = [statistics.mean(pooled[s][MEASURE].values()) for s in ("retriever", system)]
            lines.append(f"| {split} | {system.split('@')[1]} | {means[0]:.4f} | {means[1]:.4f} "
                         f"| {row['mean_diff']:+.4f} | {row['p_value']:.3g} |")  # fmt: skip
            rows.append(row | {"split": split, "seeds": sorted(by_seed)})
    return "\n".join(lines), rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+", help="finished `ar2 train` runs, one per seed")
    p.add_argument("--data", type=Path, default=Path("data/scifact"))
    p.add_argument("--depths", default="20,50,100")
    p.add_argument("--splits", default="dev,test")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    depths = sorted(int(k) for k in args.depths.split(","))
    if depths[-1] > 100:
        p.error("depths go to 100, the depth of the runs")
    values: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    for split in args.splits.split(","):
        for run in args.runs:
            seed = json.loads((run / "config.json").read_text())["seed"]
            start = time.time()
            values.setdefault(split, {})[seed] = measure_run(run, args.data, split, depths)
            print(f"{run} {split}: {time.time() - start:.0f} s", flush=True)
    text, rows = table(values)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "ranker_depth.md", text + "\n")
    record = {"runs": [str(r) for r in args.runs], "depths": depths, "rows": rows}
    atomic_write_text(args.out / "ranker_depth.json", json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
