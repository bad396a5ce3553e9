"""``ar2 jpq`` over several seeds: each system's mean ± sd, and paired t-tests over every
(seed, query) pair (the protocol of ``benchmarks/ablations.py``) and over the queries, each
the mean of its seeds (the stricter one here: two of the three systems are the same in every
seed, so the pooled test counts their queries three times).

Each folder is an ``ar2 jpq`` output of the same run, with its own ``seed`` (the batches and
the dropout). The three systems of its report are evaluated again per query on the split:
``uncompressed`` (the run's retriever and flat index), ``opq-pq`` (FAISS's post-hoc OPQ + PQ,
the same in every seed: FAISS seeds its clustering itself) and ``jpq``.

    .venv/bin/python benchmarks/jpq_seeds.py runs/jpq15/m48 runs/jpq15/m48-seed43 \\
        runs/jpq15/m48-seed44 --split test --out jpq_seeds.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

MEASURES = ["nDCG@10", "R@100"]
PAIRS = (("jpq", "uncompressed"), ("opq-pq", "uncompressed"), ("jpq", "opq-pq"))


def per_seed(folder: Path, split: str) -> dict[str, dict[str, dict[str, float]]]:
    """``system -> measure -> query -> value`` for one ``ar2 jpq`` output."""
    from ar2.data.beir import load_qrels, load_queries
    from ar2.encoders import BiEncoder
    from ar2.evaluate import per_query
    from ar2.index import FaissIndex
    from ar2.pipeline import DenseRetriever
    from ar2.train.data import dev_split_qrels

    record = json.loads((folder / "jpq.json").read_text())
    run = Path(record["run"])
    data = Path(json.loads((run / "config.json").read_text())["data"]["path"])
    if split == "dev":
        qrels = dev_split_qrels(data, json.loads((run / "dev_split.json").read_text()))
    else:
        qrels = load_qrels(data / "qrels" / f"{split}.tsv")
    asked = [q for q in load_queries(data / "queries.jsonl") if q.id in qrels]
    systems = {
        "uncompressed": (run / "retriever", run / "index"),
        "opq-pq": (run / "retriever", folder / "posthoc"),
        "jpq": (folder / "retriever", folder / "index"),
    }
    values = {}
    for name, (model, index) in systems.items():
        retriever = DenseRetriever(BiEncoder.load(model), FaissIndex.load(index))
        values[name] = per_query(retriever.retrieve(asked, 100), qrels, MEASURES)
    return values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="ar2 jpq outputs, one per seed")
    p.add_argument("--split", default="test")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    from ar2.evaluate import compare

    seeds = {str(f): per_seed(f, args.split) for f in args.folders}
    result: dict = {"split": args.split, "folders": list(seeds), "systems": {}, "tests": {}}
    for name in ("uncompressed", "opq-pq", "jpq"):
        result["systems"][name] = {}
        for m in MEASURES:
            means = [statistics.fmean(v[name][m].values()) for v in seeds.values()]
            sd = statistics.stdev(means) if len(means) > 1 else 0.0
            result["systems"][name][m] = {"mean": statistics.fmean(means), "sd": sd,
                                          "per_seed": means}  # fmt: skip
    pooled = {
        name: {m: {f"{s}/{q}": x for s, v in seeds.items() for q, x in v[name][m].items()}
               for m in MEASURES}
        for name in ("uncompressed", "opq-pq", "jpq")
    }  # fmt: skip
    averaged = {  # each query's mean over the seeds: a test over the queries themselves
        name: {m: {q: statistics.fmean(v[name][m][q] for v in seeds.values())
                   for q in next(iter(seeds.values()))[name][m]} for m in MEASURES}
        for name in ("uncompressed", "opq-pq", "jpq")
    }  # fmt: skip
    result["tests_over_query_means"] = {}
    for key, values in (("tests", pooled), ("tests_over_query_means", averaged)):
        for a, b in PAIRS:
            rows = compare({a: values[a], b: values[b]}, b, MEASURES)
            result[key][f"{a} - {b}"] = {r["measure"]: {"diff": r["mean_diff"],
                                         "p": r["p_value"]} for r in rows}  # fmt: skip
    print(f"{args.split}, {len(seeds)} seeds")
    for name, ms in result["systems"].items():
        print(f"  {name:13}" + "  ".join(f"{m} {v['mean']:.4f} ± {v['sd']:.4f}"
                                          for m, v in ms.items()))  # fmt: skip
    for key, what in (
        ("tests", "paired over the (seed, query) pairs"),
        ("tests_over_query_means", "paired over the queries, each its seeds' mean"),
    ):
        print(f"  {what}:")
        for pair, ms in result[key].items():
            print(f"    {pair:25}" + "  ".join(f"{m} {v['diff']:+.4f} (p = {v['p']:.2g})"
                                              for m, v in ms.items()))  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
