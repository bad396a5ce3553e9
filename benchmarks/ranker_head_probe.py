"""Can a ranker start from what the bi-encoder knows? Two probes of a cosine-head cross-encoder.

Not a test. Both read a finished ``quick``/``full`` run (``--run``, default
``runs/presets13/new-seed42``): its G0 retriever, dev split, dev run of round 0 and round-0
mined groups, and rerank each dev query's top ``--topk`` (20, as ``rerank_k``).

``zero-shot``: no training. The score of a (query, document) pair is the cosine of the
mean-pooled query and document segments of ``[CLS] q [SEP] [CLS] d [SEP]`` (positions
restarted per segment, token types 0), where the first ``K`` layers attend only inside each
segment and the rest attend across both. ``K = 6`` is the bi-encoder itself (up to the
document cut of 192 tokens here against 256 in the index); lower ``K`` lets more layers mix.

``train``: the head as ``ar2`` builds it (``RankerConfig(head="cosine")``: standard pair
encoding, token types 0, mean of the segments, ``scale`` x cosine), trained from G0 on the
mined groups with listwise cross-entropy (1 positive + ``nneg`` negatives, AdamW, linear
warm-up and decay, clipping 2.0), evaluated at the listed steps. Its own loop, not
``ar2 train``'s (the pipeline figures come from ``benchmarks/ablations.py``, arm ``cosine``).

    .venv/bin/python benchmarks/ranker_head_probe.py zero-shot --ks 6,5,4,2,0
    .venv/bin/python benchmarks/ranker_head_probe.py train --steps 240 --lr 3e-5 --evals 120,180,240
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import time
from pathlib import Path

import ir_measures
import numpy as np
import torch
from ir_measures import nDCG
from transformers import AutoModel, AutoTokenizer

MEASURE = nDCG @ 10


class Dev:
    """The run's dev queries, their top ``topk`` from round 0, qrels and the corpus texts."""

    def __init__(self, run: Path, data: Path, topk: int) -> None:
        self.corpus = {}
        for line in (data / "corpus.jsonl").open():
            doc = json.loads(line)
            self.corpus[doc["_id"]] = (doc.get("title", "") + " " + doc["text"]).strip()
        lines = (data / "queries.jsonl").read_text().splitlines()
        self.queries = {json.loads(x)["_id"]: json.loads(x)["text"] for x in lines}
        self.ids = json.loads((run / "dev_split.json").read_text())["queries"]
        self.top: dict[str, list[str]] = collections.defaultdict(list)
        for line in (run / "dev_runs" / "round-0.trec").open():
            qid, _, did, rank, *_ = line.split()
            if int(rank) <= topk:
                self.top[qid].append(did)
        dev = set(self.ids)
        rows = (x.split()[:3] for x in (data / "qrels" / "train.tsv").open())
        self.qrels = [ir_measures.Qrel(q, d, int(r)) for q, d, r in rows if q in dev]

    def ndcg(self, score) -> float:
        scored = []
        for qid in self.ids:
            docs = self.top[qid]
            values = score(self.queries[qid], [self.corpus[d] for d in docs])
            scored += [ir_measures.ScoredDoc(qid, d, float(v)) for d, v in zip(docs, values)]
        return ir_measures.calc_aggregate([MEASURE], self.qrels, scored)[MEASURE]


@torch.no_grad()
def layered_cosine(model, tok, k: int, query: str, docs: list[str]) -> np.ndarray:
    """Cosine of the pooled segments; layers below ``k`` attend inside each segment only."""
    q_ids = tok(query, truncation=True, max_length=64)["input_ids"]
    rows = [q_ids + tok(d, truncation=True, max_length=192)["input_ids"] for d in docs]
    n, width, lq = len(rows), max(map(len, rows)), len(q_ids)
    ids = torch.zeros(n, width, dtype=torch.long)
    pos = torch.zeros(n, width, dtype=torch.long)
    seg = torch.full((n, width), 2)  # 0 query, 1 document, 2 padding
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        pos[i, :lq], pos[i, lq : len(row)] = torch.arange(lq), torch.arange(len(row) - lq)
        seg[i, :lq], seg[i, lq : len(row)] = 0, 1
    valid = seg < 2
    inside = (seg[:, :, None] == seg[:, None, :]) & valid[:, None, :]  # (n, width, width)
    across = valid[:, None, :].expand(n, width, width)
    lowest = torch.finfo(torch.float32).min
    hidden = model.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids), position_ids=pos)
    for layer_no, layer in enumerate(model.encoder.layer):
        allowed = inside if layer_no < k else across
        hidden = layer(hidden, torch.where(allowed, 0.0, lowest)[:, None])
    q_mask, d_mask = (seg == 0).float()[..., None], (seg == 1).float()[..., None]
    q_vec = (hidden * q_mask).sum(1) / q_mask.sum(1)
    d_vec = (hidden * d_mask).sum(1) / d_mask.sum(1)
    return torch.nn.functional.cosine_similarity(q_vec, d_vec).numpy()


def zero_shot(args: argparse.Namespace, dev: Dev) -> None:
    model_dir = args.run / "g0" / "retriever"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    for k in (int(x) for x in args.ks.split(",")):
        start = time.time()
        value = dev.ndcg(lambda q, docs, k=k: layered_cosine(model, tok, k, q, docs))
        print(f"K={k} dev nDCG@10 {value:.4f} ({time.time() - start:.0f} s)", flush=True)
    retriever = dev.ndcg(lambda q, docs: -np.arange(len(docs)))
    print(f"the retriever's own order: dev nDCG@10 {retriever:.4f}")


def train(args: argparse.Namespace, dev: Dev) -> None:
    from ar2.encoders import CrossEncoder

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    ranker = CrossEncoder.load(args.run / "g0" / "retriever", head="cosine",
                               max_length=args.max_length, precision="fp32")  # fmt: skip
    groups = [json.loads(x) for x in (args.run / "mined" / "round-0" / "groups.jsonl").open()]
    opt = torch.optim.AdamW(ranker.model.parameters(), lr=args.lr, weight_decay=0.0)
    warm = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (args.steps - s) / max(1, args.steps - warm)))
    )
    evals = {int(x) for x in args.evals.split(",")}
    order: list[int] = []
    losses: list[float] = []
    start = time.time()
    ranker.model.train()
    for step in range(args.steps + 1):
        if step in evals:
            value = dev.ndcg(lambda q, docs: ranker.score_pairs([(q, d) for d in docs]))
            print(f"step {step}: dev nDCG@10 {value:.4f} ({time.time() - start:.0f} s)", flush=True)
        if step == args.steps:
            break
        if len(order) < args.batch_size:
            order += random.sample(range(len(groups)), len(groups))
        pairs = []
        for group in (groups[order.pop()] for _ in range(args.batch_size)):
            docs = [
                random.choice(group["positives"]),
                *random.sample(group["negatives"], args.nneg),
            ]
            pairs += [(group["query"], dev.corpus[d]) for d in docs]
        logits = ranker.logits(pairs).view(args.batch_size, 1 + args.nneg)
        loss = torch.nn.functional.cross_entropy(
            logits, torch.zeros(args.batch_size, dtype=torch.long)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ranker.model.parameters(), 2.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        if (step + 1) % 10 == 0:
            print(f"step {step + 1}: loss {np.mean(losses[-10:]):.3f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("probe", choices=["zero-shot", "train"])
    p.add_argument("--run", type=Path, default=Path("runs/presets13/new-seed42"))
    p.add_argument("--data", type=Path, default=Path("data/scifact"))
    p.add_argument("--topk", type=int, default=20)
    p.add_argument("--ks", default="6,5,4,2,0")
    p.add_argument("--steps", type=int, default=90)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--nneg", type=int, default=3)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--evals", default="0,90")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    dev = Dev(args.run, args.data, args.topk)
    (zero_shot if args.probe == "zero-shot" else train)(args, dev)


if __name__ == "__main__":
    main()
