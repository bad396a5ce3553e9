"""Memory-bounded indexing: FAISS presets on many vectors, and streaming corpus encoding.

``vectors``: ``--n`` synthetic ``--d``-dimensional unit vectors (a seeded mixture of 1,000
Gaussian clusters, closer to real embeddings than uniform noise) are written to a ``.npy``
file; each preset (flat, hnsw, ivfpq) is then built from the file in its own subprocess by
``FaissIndex.build_from_npy`` (training on a sample, adding in chunks), so that its peak RSS
is its own, saved, and loaded memory-mapped (as ``ar2 train``'s refreshes load it). Reported
per preset: build time, peak RSS against the raw vector bytes, QPS of ``--queries`` held-out
queries searched one batch at a time, and recall@10 against exact search.

``encode``: ``--docs`` short synthetic documents streamed through a tiny random BERT by
``BiEncoder.encode_docs_to`` into a memory-mapped file, for growing corpus sizes, each in its
own subprocess: peak RSS should not grow with the corpus.

    .venv/bin/python benchmarks/scale.py vectors --n 1000000 --out scale_vectors.json
    .venv/bin/python benchmarks/scale.py encode --docs 200000 --out scale_encode.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PRESETS = ("flat", "hnsw", "ivfpq")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["vectors", "encode", "_build", "_encode"])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors (vectors)")
    parser.add_argument("--d", type=int, default=384, help="dimension (vectors)")
    parser.add_argument("--queries", type=int, default=1000, help="queries (vectors)")
    parser.add_argument("--docs", type=int, default=200_000, help="documents (encode)")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--dir", help="working folder (default: a temporary one)")
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--ef-construction", type=int, default=128, help="HNSW build beam")
    parser.add_argument("--out", help="also write the results as JSON")
    args = parser.parse_args(argv)
    {"vectors": vectors, "encode": encode, "_build": _build, "_encode": _encode}[args.what](args)


SWEEP: dict[str, list[dict[str, int]]] = {
    "flat": [{}],
    "hnsw": [{"efSearch": 128}, {"efSearch": 256}, {"efSearch": 512}],
    # refine 0: the PQ codes alone; refine r: the top 10 r candidates re-scored exactly from
    # the float32 vectors on disk (IndexConfig.refine)
    "ivfpq": [
        {"nprobe": 32, "refine": 0},
        {"nprobe": 16, "refine": 5},
        {"nprobe": 16, "refine": 10},
        {"nprobe": 32, "refine": 10},
    ],
}


def _label(setting: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in setting.items()) or "exact"


TARGET_RECALL, TARGET_SPEEDUP = 0.9, 10.0


def vectors(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        folder = Path(work)
        start = time.perf_counter()
        _write_vectors(folder, args.n, args.d, args.queries)
        print(f"wrote {args.n} x {args.d} vectors in {time.perf_counter() - start:.0f} s")
        results = {}
        for preset in ["flat", *[p for p in args.presets.split(",") if p != "flat"]]:
            efc = ["--ef-construction", str(args.ef_construction)]
            results[preset] = _child("_build", "--dir", work, "--preset", preset, *efc)
            for i, r in enumerate(results[preset]["settings"].values()):
                hits = np.load(folder / f"hits-{preset}-{i}.npy")
                truth = np.load(folder / "hits-flat-0.npy")
                r["recall@10"] = float(
                    np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hits, truth)])
                )
            print(json.dumps({preset: results[preset]}), flush=True)
    raw = args.n * args.d * 4 / 1e9
    exact = results["flat"]["settings"]["exact"]["qps"]
    print(f"\nraw vectors: {raw:.3f} GB")
    print("\n| preset | factory | build s | peak RSS GB (after imports) | RSS / raw "
          "| search setting | QPS | x exact | recall@10 |")  # fmt: skip
    print("|---|---|---:|---:|---:|---|---:|---:|---:|")
    for preset, r in results.items():
        for setting, m in r["settings"].items():
            print(
                f"| {preset} | `{r['factory']}` | {r['build_s']:.1f} | {r['peak_rss_gb']:.2f} "
                f"({r['base_rss_gb']:.2f}) | {r['peak_rss_gb'] / raw:.2f} "
                f"| {setting} | {m['qps']:.0f} | {m['qps'] / exact:.1f} | {m['recall@10']:.3f} |"
            )
    met = [
        (preset, setting, m["qps"] / exact, m["recall@10"])
        for preset, r in results.items() if preset != "flat"
        for setting, m in r["settings"].items()
        if m["recall@10"] >= TARGET_RECALL and m["qps"] / exact >= TARGET_SPEEDUP
    ]  # fmt: skip
    print(f"\nrecall@10 >= {TARGET_RECALL} at >= {TARGET_SPEEDUP}x exact QPS: {met or 'none'}")
    _save(args, {"n": args.n, "d": args.d, "queries": args.queries, "raw_gb": raw,
                 "results": results})  # fmt: skip


def _write_vectors(folder: Path, n: int, d: int, n_queries: int) -> None:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((1000, d)).astype(np.float32)
    out = np.lib.format.open_memmap(folder / "vectors.npy", "w+", np.float32, (n, d))
    for start in range(0, n, 100_000):  # in chunks: the generator itself stays small
        m = min(100_000, n - start)
        out[start : start + m] = _points(rng, centers, m)
    out.flush()
    del out
    np.save(folder / "queries.npy", _points(rng, centers, n_queries))


def _points(rng: np.random.Generator, centers: np.ndarray, m: int) -> np.ndarray:
    x = centers[rng.integers(0, len(centers), m)] + rng.standard_normal(
        (m, centers.shape[1]), dtype=np.float32
    )
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _build(args: argparse.Namespace) -> None:
    import faiss

    from ar2.config import IndexConfig
    from ar2.index import FaissIndex

    folder = Path(args.dir)
    base = _peak_rss_gb()  # the interpreter and the libraries, before any vector
    queries = np.load(folder / "queries.npy")
    n = np.load(folder / "vectors.npy", mmap_mode="r").shape[0]
    ids = [str(i) for i in range(n)]
    start = time.perf_counter()
    config = IndexConfig(preset=args.preset, ef_construction=args.ef_construction)
    built = FaissIndex.build_from_npy(folder / "vectors.npy", ids, config)
    build_s = time.perf_counter() - start
    built.save(folder / f"index-{args.preset}")  # searched as served: saved, then mapped
    del built
    index = FaissIndex.load(folder / f"index-{args.preset}", mmap=True)
    settings = {}
    for i, setting in enumerate(SWEEP[args.preset]):
        for name, value in setting.items():
            if name == "refine":
                index.config = dataclasses.replace(index.config, refine=value)
            else:
                faiss.ParameterSpace().set_index_parameter(index.index, name, value)
        start = time.perf_counter()
        hits = index.search(queries, 10)
        settings[_label(setting)] = {"qps": len(queries) / (time.perf_counter() - start)}
        found = np.array([[int(h.doc_id) for h in row] for row in hits])
        np.save(folder / f"hits-{args.preset}-{i}.npy", found)
    print(json.dumps({"factory": index.factory, "build_s": build_s, "peak_rss_gb": _peak_rss_gb(),
                      "base_rss_gb": base, "settings": settings}))  # fmt: skip


def encode(args: argparse.Namespace) -> None:
    sizes = [args.docs // 8, args.docs // 4, args.docs // 2, args.docs]
    results = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        for n in sizes:
            results[n] = _child("_encode", "--dir", work, "--docs", str(n))
            print(json.dumps({n: results[n]}), flush=True)
    print("\n| documents | encode s | docs/s | peak RSS GB | vectors file GB |")
    print("|---:|---:|---:|---:|---:|")
    for n, r in results.items():
        print(
            f"| {n} | {r['encode_s']:.1f} | {n / r['encode_s']:.0f} | {r['peak_rss_gb']:.3f} "
            f"| {r['file_gb']:.3f} |"
        )
    _save(args, {"results": results})


def _encode(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from ar2.encoders import BiEncoder
    from ar2.types import Doc
    from conftest import build_tiny_bert

    folder = Path(args.dir)
    bert = folder / "bert"
    if not bert.is_dir():
        build_tiny_bert(bert, dropout=0.0)
    encoder = BiEncoder.load(bert, precision="fp32", doc_max_length=32)
    words = ["cats", "dogs", "fish", "cancer", "gene", "brain", "heart", "drug", "mice", "study"]

    def docs() -> Any:  # generated on the fly: the corpus is never held
        for i in range(args.docs):
            text = " ".join(words[(i * k) % 10] for k in range(1, 9)) + f" w{i % 40}"
            yield Doc(str(i), text)

    start = time.perf_counter()
    path = folder / f"v{args.docs}.npy"
    encoder.encode_docs_to(path, docs(), args.docs)
    print(
        json.dumps(
            {
                "encode_s": time.perf_counter() - start,
                "peak_rss_gb": _peak_rss_gb(),
                "file_gb": path.stat().st_size / 1e9,
            }
        )
    )


def _child(*argv: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _peak_rss_gb() -> float:
    """This process's peak RSS: ``VmHWM`` (``ru_maxrss`` would carry the parent's peak over
    ``exec`` on Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _save(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    payload |= {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                "cpus": len(os.sched_getaffinity(0)),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
