"""The dense index in Milvus (milvus-lite) against FAISS: the same answers, and their speed.

Not a test. Two studies (issue 17):

``check``: the ``bars``-style check. SciFact is indexed twice by the CLI, ``ar2 index
data/scifact --kind dense --out OUT/faiss`` and ``... --store milvus --uri OUT/store.db --out
OUT/milvus``; each folder is served by ``ar2 serve FOLDER --port 0`` in a subprocess, and the
300 test queries are asked over HTTP (``POST /search/batch``, dense, k = 10). nDCG@10 of each
service (ir_measures), their difference, and how many queries got the same top 10.

``latency``: one query at a time, in-process, ``FaissIndex.search`` against
``MilvusIndex.search`` (milvus-lite, whose engine runs in this process behind a loopback gRPC
server), over the same vectors: SciFact's 5,183 MiniLM vectors (from OUT/faiss of ``check``)
and 1,000,000 synthetic unit vectors of 384 dimensions (Gaussian, seeded), per preset. For
each: the build time, p50/p95 ms per query over 200 queries (after 20 warm-up ones), and the
bytes per vector on disk (FAISS's index file; milvus-lite's store folder, vectors only: no
texts) and the growth of this process's resident memory while the index loads. Presets run
in alternation at one size, each store's queries in blocks of 20, so drift hits both.

    .venv/bin/python benchmarks/milvus_store.py check --out runs/milvus17
    .venv/bin/python benchmarks/milvus_store.py latency --out runs/milvus17 --sizes 5183 \
        --presets flat,hnsw,ivf
    .venv/bin/python benchmarks/milvus_store.py latency --out runs/milvus17 --sizes 1000000 \
        --presets flat,ivf
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_label  # benchmarks/machine.py

from ar2._io import atomic_write_json

DIM = 384
WARMUP, QUERIES, BLOCK = 20, 200, 20


def check(out: Path, data: Path) -> dict[str, Any]:
    """Index SciFact both ways with the CLI, serve each, and score the answers over HTTP."""
    import httpx
    import serve_latency  # benchmarks/serve_latency.py: ar2 serve in a subprocess

    from ar2.data.beir import load_qrels, load_queries
    from ar2.evaluate import per_query

    folders = {"faiss": out / "faiss", "milvus": out / "milvus"}
    commands = {
        "faiss": ["index", str(data), "--kind", "dense", "--out", str(folders["faiss"])],
        "milvus": ["index", str(data), "--kind", "dense", "--store", "milvus", "--uri",
                   str(out / "store.db"), "--out", str(folders["milvus"])],
    }  # fmt: skip
    seconds = {}
    for name, command in commands.items():
        if not (folders[name] / "manifest.json").is_file():
            start = time.time()
            subprocess.run([sys.executable, "-m", "ar2.cli", *command], check=True)
            seconds[name] = round(time.time() - start, 1)
    qrels = load_qrels(data / "qrels" / "test.tsv")
    queries = [q for q in load_queries(data / "queries.jsonl") if q.id in qrels]
    runs: dict[str, dict[str, list[Any]]] = {}
    for name, folder in folders.items():
        with serve_latency.served(str(folder)) as url, httpx.Client(timeout=120) as client:
            runs[name] = {}
            for start in range(0, len(queries), 32):
                part = queries[start : start + 32]
                body = {"queries": [q.text for q in part], "k": 10, "mode": "dense"}
                reply = client.post(f"{url}/search/batch", json=body)
                reply.raise_for_status()
                for q, hits in zip(part, reply.json()["results"], strict=True):
                    runs[name][q.id] = hits["hits"]
    from ar2.types import Hit

    values = {name: per_query({q: [Hit(h["id"], h["score"]) for h in hits]
                               for q, hits in run.items()}, qrels, ["nDCG@10"])["nDCG@10"]
              for name, run in runs.items()}  # fmt: skip
    means = {name: statistics.fmean(v.values()) for name, v in values.items()}
    same = sum(
        [h["id"] for h in runs["faiss"][q.id]] == [h["id"] for h in runs["milvus"][q.id]]
        for q in queries
    )
    return {"nDCG@10": means, "difference": means["milvus"] - means["faiss"],
            "same_top10": same, "queries": len(queries), "index_seconds": seconds,
            "commands": {n: "ar2 " + " ".join(c) for n, c in commands.items()}}  # fmt: skip


def vectors(size: int, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """``size`` document vectors and the queries: SciFact's own at its size, else synthetic."""
    from ar2.index import FaissIndex

    rng = np.random.default_rng(0)
    if size == 5183 and (out / "faiss" / "manifest.json").is_file():
        index = FaissIndex.load(out / "faiss")
        docs = index.index.reconstruct_n(0, len(index.ids))
        return docs, docs[rng.choice(len(docs), WARMUP + QUERIES, replace=False)]
    docs = rng.standard_normal((size, DIM), dtype=np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = rng.standard_normal((WARMUP + QUERIES, DIM), dtype=np.float32)
    return docs, queries / np.linalg.norm(queries, axis=1, keepdims=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def latency(out: Path, sizes: list[int], presets: list[str]) -> dict[str, Any]:
    """Build both stores per preset at each size; time single-query searches alternately."""
    from ar2.config import IndexConfig
    from ar2.index import FaissIndex
    from ar2.index.milvus import MilvusIndex

    results: dict[str, Any] = {}
    for size in sizes:
        docs, queries = vectors(size, out)
        ids = [str(i) for i in range(size)]
        for preset in presets:
            key = f"{size} {preset}"
            work = out / "latency" / key.replace(" ", "-")
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            config = IndexConfig(preset=preset)
            print(f"{key}: building", flush=True)
            base = rss_bytes()
            start = time.time()
            faiss = FaissIndex.build(docs, ids, config)
            faiss_build = time.time() - start
            faiss.save(work / "faiss")
            faiss_rss = rss_bytes() - base
            base = rss_bytes()
            start = time.time()
            milvus = MilvusIndex.build(docs, ids, str(work / "milvus.db"), "bench", config)
            milvus_build = time.time() - start
            milvus_rss = rss_bytes() - base
            ms: dict[str, list[float]] = {"faiss": [], "milvus": []}
            for q in queries[:WARMUP]:
                faiss.search(q[None], 10), milvus.search(q[None], 10)
            recall = []
            for block in range(WARMUP, WARMUP + QUERIES, BLOCK):
                for name, index in (("faiss", faiss), ("milvus", milvus)):
                    for q in queries[block : block + BLOCK]:
                        start = time.perf_counter()
                        index.search(q[None], 10)
                        ms[name].append((time.perf_counter() - start) * 1000)
                for q in queries[block : block + BLOCK]:
                    a = {h.doc_id for h in faiss.search(q[None], 10)[0]}
                    b = {h.doc_id for h in milvus.search(q[None], 10)[0]}
                    recall.append(len(a & b) / 10)
            milvus.close()
            results[key] = {
                "size": size, "preset": preset,
                "build_s": {"faiss": round(faiss_build, 2), "milvus": round(milvus_build, 2)},
                "p50_ms": {n: round(statistics.median(v), 3) for n, v in ms.items()},
                "p95_ms": {n: round(float(np.percentile(v, 95)), 3) for n, v in ms.items()},
                "disk_bytes_per_vector": {
                    "faiss": round(folder_bytes(work / "faiss") / size, 1),
                    "milvus": round(folder_bytes(work / "milvus.db") / size, 1)},
                "rss_growth_bytes_per_vector": {"faiss": round(faiss_rss / size, 1),
                                                "milvus": round(milvus_rss / size, 1)},
                "top10_overlap": round(statistics.fmean(recall), 4),
                "milvus_index": milvus.manifest["milvus_index"], "faiss_factory": faiss.factory,
            }  # fmt: skip
            print(json.dumps(results[key]), flush=True)
            del faiss, milvus
            gc.collect()
            shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", choices=("check", "latency"))
    p.add_argument("--out", type=Path, default=Path("runs/milvus17"))
    p.add_argument("--data", type=Path, default=Path("data/scifact"))
    p.add_argument("--sizes", default="5183,1000000", help="vectors, comma-separated")
    p.add_argument("--presets", default="flat,hnsw,ivf", help="presets, comma-separated "
                   "(milvus-lite builds FLAT, IVF_FLAT and HNSW)")  # fmt: skip
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.study == "check":
        result = check(args.out, args.data)
    else:
        sizes = [int(s) for s in args.sizes.split(",")]
        result = latency(args.out, sizes, args.presets.split(","))
    record = {"study": args.study, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "cpu": cpu_label(), "cores": os.cpu_count(), "result": result}  # fmt: skip
    print(json.dumps(record, indent=1))
    name = args.study if args.study == "check" else f"latency-{args.sizes.replace(',', '-')}"
    atomic_write_json(args.out / f"{name}.json", record)


if __name__ == "__main__":
    main()
