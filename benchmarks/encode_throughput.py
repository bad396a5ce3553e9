"""Corpus encoding throughput: ar2's BiEncoder against sentence-transformers, side by side.

Both systems encode the same SciFact documents (``title + " " + text``, exactly the string
``BiEncoder.encode_docs`` feeds the model) with the same model (the bundled all-MiniLM-L6-v2)
and the same max length (256 tokens), in one process, interleaved per repeat
(ST, ours, ours-fp32, ST, ours, ours-fp32, ...) so that machine drift hits all of them alike:

* ``st-fp32``: ``SentenceTransformer(path, device="cpu").encode(texts)`` with its defaults
  (fp32, batch 32, sorted by character length);
* ``ar2-auto``: ``BiEncoder.load(None, doc_max_length=256).encode_docs(docs)`` with its defaults
  (precision ``auto``: bf16 autocast where the CPU has AVX512-BF16/AMX; length-sorted batches
  by token count);
* ``ar2-fp32``: the same with ``precision="fp32"``, as a reference.

It reports docs/s, the speed-up of ar2 over ST (per repeat and the median), how far ar2's
vectors are from ST's (max abs difference, min cosine) and, when the whole corpus was encoded,
nDCG@10 on the SciFact test split (each system encodes the queries its own way; FAISS flat IP).

Run from the repository root:

    .venv/bin/python benchmarks/encode_throughput.py --repeats 2 --out bench.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_fields, describe  # benchmarks/machine.py

MAX_LENGTH = 256
WARMUP_DOCS = 64
SYSTEMS = ("st-fp32", "ar2-auto", "ar2-fp32")
LABELS = {
    "st-fp32": "sentence-transformers `encode` (defaults, fp32)",
    "ar2-auto": "ar2 `BiEncoder.encode_docs` (defaults, precision auto)",
    "ar2-fp32": "ar2 `BiEncoder.encode_docs` (precision fp32)",
}
SPEEDUP_TARGET = 2.5
NDCG_TOLERANCE = 0.005


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/scifact", help="BEIR folder (default: %(default)s)")
    parser.add_argument("--split", default="test", help="qrels split for nDCG@10 (default: test)")
    parser.add_argument(
        "--docs", type=int, default=None, help="encode only the first N documents (default: all)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds (default: 1)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch size for all systems (default: each system's own default: ST 32, ar2 16)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1 or (args.docs is not None and args.docs < 1):
        parser.error("--repeats and --docs must be positive")
    return args


# ---------------------------------------------------------------------------------------------
# hardware


def hardware() -> dict[str, Any]:
    """CPU model, cores, bf16 flags, and the library versions that matter for the timings."""
    import sentence_transformers
    import torch
    import transformers

    import ar2

    try:
        fields = cpu_fields(Path("/proc/cpuinfo").read_text(encoding="utf-8"))
    except OSError:
        fields = {}
    flags = set(fields.get("flags", "").split())
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": fields.get("model name", "unknown"),
        "cpu": describe(fields, os.cpu_count()),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "bf16_flags": sorted(f for f in flags if "bf16" in f),
        "avx512": "avx512f" in flags,
        "torch_cpu_capability": _cpu_capability(torch),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "ar2": ar2.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _cpu_capability(torch: Any) -> str | None:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older torch
        return None


def loadavg() -> float | None:
    """1-minute load average: a hint that something else was running during a timing."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------------------------------------
# the systems


def build_systems(batch_size: int | None) -> tuple[dict[str, Callable[..., np.ndarray]], Any]:
    """``name -> encode(docs_or_texts) -> vectors`` for the three systems, plus the encoders."""
    from sentence_transformers import SentenceTransformer

    from ar2.encoders import BiEncoder, default_model_path
    from ar2.encoders._runtime import use_bf16

    path = str(default_model_path())
    st = SentenceTransformer(path, device="cpu")
    st.max_seq_length = MAX_LENGTH  # the folder already says 256; set it to be explicit
    extra = {} if batch_size is None else {"batch_size": batch_size}
    ours = BiEncoder.load(None, doc_max_length=MAX_LENGTH, **extra)
    ours32 = BiEncoder.load(None, doc_max_length=MAX_LENGTH, precision="fp32", **extra)
    st_kwargs = {} if batch_size is None else {"batch_size": batch_size}

    systems: dict[str, Callable[..., np.ndarray]] = {
        "st-fp32": lambda docs, texts: st.encode(texts, **st_kwargs),
        "ar2-auto": lambda docs, texts: ours.encode_docs(docs),
        "ar2-fp32": lambda docs, texts: ours32.encode_docs(docs),
    }
    info = {
        "model": path,
        "max_length": {"st": st.max_seq_length, "ar2": ours.config.doc_max_length},
        "batch_size": {
            "st": batch_size or 32,
            "ar2": ours.config.batch_size,
        },
        "ar2_auto_uses_bf16": use_bf16(ours.config.precision, ours.device),
        "ar2_device": ours.device,
    }
    return systems, (st, ours, ours32, info)


# ---------------------------------------------------------------------------------------------
# measurement


def time_encodings(
    systems: dict[str, Callable[..., np.ndarray]], docs: list[Any], texts: list[str], repeats: int
) -> tuple[dict[str, list[dict[str, float | None]]], dict[str, np.ndarray]]:
    """Warm up, then time every system once per repeat, interleaved; keep the last vectors."""
    for name, encode in systems.items():
        print(f"warm-up {name} on {min(WARMUP_DOCS, len(docs))} docs", flush=True)
        encode(docs[:WARMUP_DOCS], texts[:WARMUP_DOCS])
    runs: dict[str, list[dict[str, float | None]]] = {name: [] for name in systems}
    vectors: dict[str, np.ndarray] = {}
    for rep in range(1, repeats + 1):
        for name, encode in systems.items():
            load_before = loadavg()
            cpu_start, start = time.process_time(), time.perf_counter()
            out = encode(docs, texts)
            seconds = time.perf_counter() - start
            cpu_seconds = time.process_time() - cpu_start
            vectors[name] = np.asarray(out, dtype=np.float32)
            rate = len(docs) / seconds
            runs[name].append(
                {
                    "seconds": seconds,
                    "docs_per_s": rate,
                    "cpu_seconds": cpu_seconds,
                    "loadavg_before": load_before,
                    "loadavg_after": loadavg(),
                }
            )
            load_after = runs[name][-1]["loadavg_after"]
            print(
                f"repeat {rep}/{repeats}  {name:9s} {seconds:8.1f} s  {rate:7.1f} docs/s"
                f"  cpu {cpu_seconds:6.1f} s  (load {load_before} -> {load_after})",
                flush=True,
            )
    return runs, vectors


def vector_agreement(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Max abs element difference and min row cosine between two (n, dim) matrices."""
    a = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    b = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cos = np.sum(a * b, axis=1)
    return {
        "max_abs_diff": float(np.max(np.abs(ours - ref))),
        "min_cosine": float(np.min(cos)),
        "mean_cosine": float(np.mean(cos)),
    }


def ndcg_at_10(
    doc_vectors: np.ndarray,
    doc_ids: list[str],
    query_vectors: np.ndarray,
    queries: list[Any],
    qrels,
) -> float:
    from ar2.evaluate import evaluate
    from ar2.index.dense import FaissIndex

    index = FaissIndex.build(doc_vectors, doc_ids)
    hits = index.search(query_vectors, k=10)
    run = {q.id: h for q, h in zip(queries, hits)}
    return evaluate(run, qrels, ["nDCG@10"])["nDCG@10"]


# ---------------------------------------------------------------------------------------------
# report


def summarise(
    runs: dict[str, list[dict[str, float | None]]],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    rates = {name: [float(r["docs_per_s"] or 0.0) for r in rs] for name, rs in runs.items()}
    per_system = {
        name: {
            "docs_per_s": rs,
            "median_docs_per_s": statistics.median(rs),
            "total_seconds": [r["seconds"] for r in runs[name]],
        }
        for name, rs in rates.items()
    }
    ratios = {}
    for name in ("ar2-auto", "ar2-fp32"):
        per_rep = [o / s for o, s in zip(rates[name], rates["st-fp32"])]
        ratios[name] = {"per_repeat": per_rep, "median": statistics.median(per_rep)}
    return per_system, ratios


def markdown_table(result: dict[str, Any]) -> str:
    per_system, ratios = result["throughput"], result["speedup_vs_st"]
    agreement, ndcg = result["agreement_vs_st"], result.get("ndcg@10") or {}
    head = (
        "| system | docs/s per repeat | median docs/s | speed-up vs ST (per repeat) | "
        "median speed-up | nDCG@10 | max abs diff vs ST | min cosine vs ST |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for name in SYSTEMS:
        s = per_system[name]
        per_rep = ", ".join(f"{x:.1f}" for x in s["docs_per_s"])
        if name in ratios:
            ratio_rep = ", ".join(f"{x:.2f}x" for x in ratios[name]["per_repeat"])
            ratio_med = f"**{ratios[name]['median']:.2f}x**"
        else:
            ratio_rep, ratio_med = "1 (baseline)", "1.00x"
        agree = agreement.get(name)
        diff = f"{agree['max_abs_diff']:.2e}" if agree else "-"
        cos = f"{agree['min_cosine']:.6f}" if agree else "-"
        score = f"{ndcg[name]:.4f}" if name in ndcg else "n/a"
        rows.append(
            f"| {name}: {LABELS[name]} | {per_rep} | {s['median_docs_per_s']:.1f} | "
            f"{ratio_rep} | {ratio_med} | {score} | {diff} | {cos} |"
        )
    return head + "\n".join(rows) + "\n"


def hardware_lines(hw: dict[str, Any]) -> str:
    return (
        f"- CPU: {hw['cpu']}, {hw['cpu_count']} logical CPUs "
        f"({hw['cpus_usable']} usable by this process)\n"
        f"- bf16 CPU flags: {', '.join(hw['bf16_flags']) or 'none'}; "
        f"torch CPU capability: {hw['torch_cpu_capability']}\n"
        f"- torch {hw['torch']} ({hw['torch_threads']} threads), transformers "
        f"{hw['transformers']}, sentence-transformers {hw['sentence_transformers']}, "
        f"ar2 {hw['ar2']}, Python {hw['python']}\n"
        f"- {hw['platform']}\n"
    )


def acceptance(result: dict[str, Any]) -> dict[str, Any]:
    speedup = result["speedup_vs_st"]["ar2-auto"]["median"]
    out: dict[str, Any] = {
        "speedup_median": speedup,
        "speedup_target": SPEEDUP_TARGET,
        "speedup_ok": speedup >= SPEEDUP_TARGET,
    }
    ndcg = result.get("ndcg@10")
    if ndcg:
        d_st = ndcg["ar2-auto"] - ndcg["st-fp32"]
        d_ours = ndcg["ar2-auto"] - ndcg["ar2-fp32"]
        out.update(
            ndcg_diff_vs_st_fp32=d_st,
            ndcg_diff_vs_ar2_fp32=d_ours,
            ndcg_tolerance=NDCG_TOLERANCE,
            ndcg_ok=abs(d_st) <= NDCG_TOLERANCE and abs(d_ours) <= NDCG_TOLERANCE,
        )
    return out


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ar2.data.beir import load_beir

    started = dt.datetime.now(dt.UTC)
    all_docs, queries, qrels = load_beir(args.data, args.split)
    docs = all_docs if args.docs is None else all_docs[: args.docs]
    full = len(docs) == len(all_docs)
    texts = [d.full_text(" ") for d in docs]  # what BiEncoder.encode_docs feeds the model
    hw = hardware()
    print(f"{len(docs)} docs from {args.data}; {hw['cpu']}; torch {hw['torch']}", flush=True)

    systems, (st, ours, ours32, info) = build_systems(args.batch_size)
    runs, vectors = time_encodings(systems, docs, texts, args.repeats)
    per_system, ratios = summarise(runs)
    agreement = {
        name: vector_agreement(vectors[name], vectors["st-fp32"])
        for name in ("ar2-auto", "ar2-fp32")
    }

    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": started.isoformat(timespec="seconds"),
        "data": args.data,
        "docs": len(docs),
        "full_corpus": full,
        "repeats": args.repeats,
        "hardware": hw,
        "setup": info,
        "runs": runs,
        "throughput": per_system,
        "speedup_vs_st": ratios,
        "agreement_vs_st": agreement,
    }
    if full:
        print(f"nDCG@10 on {args.split}: {len(queries)} queries", flush=True)
        ids = [d.id for d in docs]
        qtexts = [q.text for q in queries]
        qvec = {
            "st-fp32": st.encode(qtexts),
            "ar2-auto": ours.encode_queries(queries),
            "ar2-fp32": ours32.encode_queries(queries),
        }
        result["ndcg@10"] = {
            name: ndcg_at_10(vectors[name], ids, np.asarray(qvec[name]), queries, qrels)
            for name in SYSTEMS
        }
    else:
        print("nDCG@10 skipped: only part of the corpus was encoded", flush=True)
    result["acceptance"] = acceptance(result)

    print()
    print(markdown_table(result))
    print(hardware_lines(hw))
    print("acceptance:", json.dumps(result["acceptance"], indent=None))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
