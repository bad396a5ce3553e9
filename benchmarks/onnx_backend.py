"""ONNX Runtime against torch for the work a search does per query, side by side in one run.

For each backend (``torch``, ``onnx``, ``onnx-int8``; :mod:`ar2.encoders.onnx_runtime`) the
run's retriever and ranker are loaded once. Every query of the split is then timed, in
alternating blocks of 20 queries after a warm-up so that drift hits every backend alike:

- ``encode``: one query alone through the query tower (``BiEncoder.encode_queries([q])``);
- ``rerank20``: the ranker's scores of the query's top 20 dense hits (``CrossEncoder.score``).

Then quality on the split, through ``SearchService`` as ``ar2 serve`` runs it: nDCG@10 of
dense search and of dense with its top 20 reranked, per backend, each tested against torch's
by a paired t-test over the queries. Ratios are torch's p50 over the backend's.

    .venv/bin/python benchmarks/onnx_backend.py runs/quick --out onnx_backend.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from serve_latency import add_query_args, judged_queries

BACKENDS = ("torch", "onnx", "onnx-int8")
BLOCK, WARMUP, RERANK_K, MEASURE = 20, 5, 20, "nDCG@10"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_query_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    queries, qrels = judged_queries(args)
    began = time.perf_counter()
    services = {b: load(args.run, b) for b in BACKENDS}
    export_s = round(time.perf_counter() - began, 1)
    print(f"{len(queries)} queries; loaded {args.run} on {', '.join(BACKENDS)} in {export_s} s")
    timings = time_backends(services, queries)
    quality = measure_quality(services, queries, qrels)
    report(args, timings, quality, len(queries))


def load(run: str, backend: str) -> Any:
    from ar2.serve import SearchService

    return SearchService.load(run, backend=backend)


def time_backends(services: dict[str, Any], queries: list[Any]) -> dict[str, dict[str, list]]:
    """Milliseconds per query, per backend and task, in alternating blocks."""
    torch_service = services["torch"]
    top = torch_service.search(queries, RERANK_K, "dense", 0)  # the same 20 docs for all
    docs = torch_service.docs
    tasks = {}
    for backend, service in services.items():
        encoder = service._pipelines["dense"].retriever.encoder
        ranker = service._pipelines["dense"].ranker.model

        def encode(q: Any, enc: Any = encoder) -> None:
            enc.encode_queries([q.text])

        def rerank(q: Any, rk: Any = ranker) -> None:
            rk.score(q.text, [docs[h.doc_id] for h in top[q.id]])

        tasks[backend] = {"encode": encode, "rerank20": rerank}
    times: dict[str, dict[str, list]] = {b: {"encode": [], "rerank20": []} for b in services}
    for q in queries[:WARMUP]:
        for backend in services:
            for task in tasks[backend].values():
                task(q)
    for start in range(0, len(queries), BLOCK):
        for backend in services:
            for name, task in tasks[backend].items():
                for q in queries[start : start + BLOCK]:
                    began = time.perf_counter()
                    task(q)
                    times[backend][name].append(1000 * (time.perf_counter() - began))
    return times


def measure_quality(services: dict[str, Any], queries: list[Any], qrels: Any) -> dict[str, Any]:
    from ar2.evaluate import compare, per_query

    values = {}
    for backend, service in services.items():
        for system, rerank_k in (("dense", 0), ("dense+rerank20", RERANK_K)):
            run = service.search(queries, 10, "dense", rerank_k)
            values[f"{system} {backend}"] = per_query(run, qrels, [MEASURE])
    rows = {}
    for system in ("dense", "dense+rerank20"):
        by = {b: values[f"{system} {b}"] for b in BACKENDS}
        tests = {r["system"]: r for r in compare(by, "torch", [MEASURE])}
        rows[system] = {
            b: {
                MEASURE: statistics.fmean(by[b][MEASURE].values()),
                "diff": tests[b]["mean_diff"] if b in tests else 0.0,
                "p": tests[b]["p_value"] if b in tests else None,
            }
            for b in BACKENDS
        }
    return rows


def report(args: argparse.Namespace, times: dict, quality: dict, n: int) -> None:
    import torch

    def p50(ms: list[float]) -> float:
        return float(np.percentile(ms, 50))

    print("\n| task | backend | p50 ms | p90 ms | torch p50 / this p50 |")
    print("|---|---|---:|---:|---:|")
    for task in ("encode", "rerank20"):
        base = p50(times["torch"][task])
        for backend in BACKENDS:
            ms = times[backend][task]
            print(f"| {task} | {backend} | {p50(ms):.2f} | {np.percentile(ms, 90):.2f} "
                  f"| {base / p50(ms):.2f}x |")  # fmt: skip
    print(f"\n| system | backend | {MEASURE} | diff vs torch | p |")
    print("|---|---|---:|---:|---:|")
    for system, rows in quality.items():
        for backend, r in rows.items():
            p = "–" if r["p"] is None else f"{r['p']:.3g}"
            print(f"| {system} | {backend} | {r[MEASURE]:.4f} | {r['diff']:+.4f} | {p} |")
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    setup = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "run": args.run,
        "queries": n,
        "cpu": cpu,
        "cpus": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_1min_end": os.getloadavg()[0],
    }
    print(json.dumps(setup))
    if args.out:
        out = {"setup": setup, "times_ms": times, "quality": quality}
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
