"""Quantized embeddings (``ar2 index --quantize``) against float32 vectors, on one run's index.

The run's flat index gives the document vectors (reconstructed from FAISS, so nothing is
encoded again); the test queries are encoded once by the run's retriever. Each variant is built
with ``FaissIndex.build`` as ``ar2 index`` builds it, then searched for every query:

- ``flat``: float32 vectors, exact;
- ``int8`` and ``binary``: ``IndexConfig(quantize=...)``, codes re-scored from the float
  vectors (``refine`` 10), and the codes alone (``refine`` 0).

Reported: the index's bytes per document (``index.faiss`` on disk, which for the quantized
ones excludes the float vectors kept beside them for re-scoring), nDCG@10 and R@100 with a
paired t-test against flat, and the search time per query (all queries in one batch).

    .venv/bin/python benchmarks/quantized_index.py runs/quick --out quantized.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from serve_latency import judged_queries

VARIANTS = {
    "flat": {},
    "int8": {"quantize": "int8"},
    "int8, codes alone": {"quantize": "int8", "refine": 0},
    "binary": {"quantize": "binary"},
    "binary, codes alone": {"quantize": "binary", "refine": 0},
}
MEASURES = ["nDCG@10", "R@100"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", default="runs/quick")
    p.add_argument("--data", default="data/scifact")
    p.add_argument("--split", default="test")
    p.add_argument("--queries", type=int, default=None)
    p.add_argument("--out")
    args = p.parse_args()

    from ar2.config import IndexConfig
    from ar2.encoders import BiEncoder
    from ar2.evaluate import compare, per_query
    from ar2.index import FaissIndex

    queries, qrels = judged_queries(args)
    flat = FaissIndex.load(Path(args.run) / "index")
    docs = flat.index.reconstruct_n(0, flat.index.ntotal)  # (n, dim) float32
    vectors = BiEncoder.load(Path(args.run) / "retriever").encode_queries(queries)
    values, rows = {}, {}
    for name, settings in VARIANTS.items():
        index = FaissIndex.build(docs, flat.ids, IndexConfig(**settings))
        with tempfile.TemporaryDirectory() as tmp:
            index.save(Path(tmp) / "i")
            size = (Path(tmp) / "i" / "index.faiss").stat().st_size
        began = time.perf_counter()
        hits = index.search(vectors, 100)
        ms = 1000 * (time.perf_counter() - began) / len(queries)
        values[name] = per_query({q.id: h for q, h in zip(queries, hits)}, qrels, MEASURES)
        rows[name] = {"factory": index.factory, "bytes_per_doc": size / len(flat.ids),
                      "ms_per_query": ms, **{m: statistics.fmean(values[name][m].values())
                                            for m in MEASURES}}  # fmt: skip
    tests = {(r["system"], r["measure"]): r for r in compare(values, "flat", MEASURES)}
    print(
        "| variant | factory | bytes / doc | nDCG@10 | diff | p | R@100 | diff | p | ms / query |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        cells = []
        for m in MEASURES:
            t = tests.get((name, m))
            diff = f"{t['mean_diff']:+.4f} | {t['p_value']:.3g}" if t else "| "
            cells.append(f"{r[m]:.4f} | {diff}")
        print(f"| {name} | {r['factory']} | {r['bytes_per_doc']:.0f} | {' | '.join(cells)} "
              f"| {r['ms_per_query']:.3f} |")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "queries": len(queries)}, indent=2))


if __name__ == "__main__":
    main()
