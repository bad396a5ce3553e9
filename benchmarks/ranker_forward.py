"""Where the time of one rerank-20 goes: the ranker's forward over 20 pairs, by precision.

Not a test. The run's ranker (a sequence-classification folder) scores 20 (query, document)
pairs per SciFact query, documents drawn at random with a fixed seed, cut to the ranker's
``max_length`` (192 in ``quick``), as one padded batch, the shape ``ar2 serve`` reranks. Each
mode is timed over the same batches (median of all but the first two):

- ``fp32``: fp32 weights, no autocast;
- ``autocast``: fp32 weights under bf16 autocast (what ``ar2 serve`` runs on a bf16 CPU);
- ``bf16``: the weights cast to bf16 once, no autocast;
- ``bf16-math``: the same with torch's unfused (math) attention kernel.

For each: the largest logit difference from fp32. Then a torch profile of the ``bf16`` mode
gives the share of the linear layers (``aten::addmm``) and the rate they ran at, from their
FLOPs (2 x tokens x non-embedding linear parameters): how far the forward is from what the
matrix units can do.

    .venv/bin/python benchmarks/ranker_forward.py runs/q42/ranker --queries 12
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

PAIRS = 20


def batches(ranker: str, data: Path, queries: int, max_length: int) -> list[Any]:
    tokenizer = AutoTokenizer.from_pretrained(ranker)
    texts = [json.loads(x)["text"] for x in (data / "queries.jsonl").open()][:queries]
    docs = [json.loads(x) for x in (data / "corpus.jsonl").open()]
    rng = random.Random(0)
    out = []
    for query in texts:
        sample = rng.sample(docs, PAIRS)
        out.append(tokenizer([query] * PAIRS, [f"{d.get('title', '')} {d['text']}" for d in sample],
                             truncation="only_second", max_length=max_length, padding=True,
                             return_tensors="pt"))  # fmt: skip
    return out


def timed(model: Any, data: list[Any], autocast: bool, kernel: Any = None) -> tuple[float, Any]:
    """Median ms per batch (the first two left out) and the last batch's logits."""
    times, logits = [], None
    for batch in data:
        began = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            with sdpa_kernel([kernel]) if kernel else torch.inference_mode():
                logits = model(**batch).logits.float()[:, 0]
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times[2:]), logits


def linear_rate(model: Any, data: list[Any]) -> dict[str, float]:
    """The linear layers' share of a profiled pass over ``data`` and their GFLOP/s."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        timed(model, data, autocast=False)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    addmm = sum(e.self_cpu_time_total for e in events if e.key == "aten::addmm")
    linear = sum(m.weight.numel() for m in model.bert.encoder.modules()
                 if isinstance(m, torch.nn.Linear))  # fmt: skip
    tokens = sum(int(b["input_ids"].numel()) for b in data)
    gflop = 2 * tokens * linear / 1e9
    return {"addmm_share": round(addmm / total, 3), "linear_gflop": round(gflop, 1),
            "linear_gflop_per_s": round(gflop / (addmm / 1e6), 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ranker", help="a ranker folder (sequence classification), e.g. RUN/ranker")
    parser.add_argument("--data", default="data/scifact", type=Path)
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--max-length", type=int, default=192)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = batches(args.ranker, args.data, args.queries, args.max_length)
    fp32 = AutoModelForSequenceClassification.from_pretrained(args.ranker).eval()
    bf16 = AutoModelForSequenceClassification.from_pretrained(args.ranker, dtype=torch.bfloat16)
    bf16.eval()
    modes = {"fp32": (fp32, False, None), "autocast": (fp32, True, None),
             "bf16": (bf16, False, None), "bf16-math": (bf16, False, SDPBackend.MATH)}  # fmt: skip
    rows, reference = {}, None
    for name, (model, autocast, kernel) in modes.items():
        ms, logits = timed(model, data, autocast, kernel)
        reference = logits if reference is None else reference
        diff = round(float((logits - reference).abs().max()), 4)
        rows[name] = {"p50_ms": round(ms, 1), "max_logit_diff": diff}
    print(f"{args.queries} batches of {PAIRS} pairs, width {tuple(data[0]['input_ids'].shape)}")
    print("| mode | p50 ms per rerank-20 forward | max logit diff vs fp32 |\n|---|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['p50_ms']} | {row['max_logit_diff']} |")
    rate = linear_rate(bf16, data)
    print(json.dumps({"bf16_profile": rate, "cpu": platform.processor() or platform.machine(),
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}))  # fmt: skip


if __name__ == "__main__":
    main()
