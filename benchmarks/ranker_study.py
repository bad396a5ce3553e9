"""What makes the ranker help? Train one ranker variant, then score dev and test reranking.

Not a test. Reads a finished (or G0-only) `ar2 train` run folder: its G0 retriever, its round-0
index and mined groups, its dev split. Trains a ranker from ``--init`` on ``--groups`` and prints
nDCG@10 on dev and test for: the retriever alone (G), the ranker alone on the top ``--rerank-k``
(G+D), and the interpolation ``(1 - w) z(G) + w z(D)`` of :mod:`ar2.fusion`
for w = 0, 0.1 ... 1; test uses the w that is best on dev. Usage:

    .venv/bin/python benchmarks/ranker_study.py RUN_DIR --init minilm|g0 \\
        --groups round-0|bm25 --steps 100 --lr 1e-4 --head-lr 1e-3 [--head cosine] \\
        [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ar2.config import StageConfig
from ar2.data.training import read_groups
from ar2.data.trec import read_run
from ar2.encoders import BiEncoder, CrossEncoder
from ar2.fusion import WEIGHTS, tune_weight
from ar2.index import FaissIndex
from ar2.pipeline import DenseRetriever
from ar2.train import steps
from ar2.train.data import load_train_data
from ar2.train.loop import Stepper, seed_step
from ar2.train.rounds import score_heads

MEASURE = "nDCG@10"


def train_ranker(args: argparse.Namespace, docs: dict) -> CrossEncoder:
    init = None if args.init == "minilm" else args.run / "g0" / "retriever"
    torch.manual_seed(args.seed)
    ranker = CrossEncoder.load(init, max_length=args.max_length, head=args.head)
    groups = read_groups(args.run / "mined" / args.groups)
    cfg = StageConfig(args.steps, args.batch_size, args.n_neg, args.lr, head_lr=args.head_lr)
    stepper = Stepper(ranker.model, cfg, args.steps)
    ranker.model.train(not args.no_dropout)
    start, losses = time.time(), []
    for step in range(args.steps):
        seed_step(args.seed, "study", step)
        batch = steps.draw_batch(groups, docs, cfg, args.seed, "study", step)
        losses.append(stepper.step(steps.ranker_loss(ranker, batch)))
        if (step + 1) % 10 == 0:
            mean = sum(losses[-10:]) / 10
            print(
                f"step {step + 1}: mean loss {mean:.3f} ({time.time() - start:.0f} s)", flush=True
            )
    return ranker


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--data", type=Path, default=Path("data/scifact"))
    p.add_argument("--init", choices=["minilm", "g0"], default="minilm")
    p.add_argument("--groups", default="round-0")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-neg", type=int, default=7)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--head", choices=["classifier", "cosine"], default="classifier")
    p.add_argument("--rerank-k", type=int, default=20)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-dropout", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    dev_ids = json.loads((args.run / "dev_split.json").read_text())["queries"]
    data = load_train_data(args.data, len(dev_ids), 42, Path(tempfile.mkdtemp()))
    assert [q.id for q in data.dev] == dev_ids, "dev split differs from the run's"
    t0 = time.time()
    ranker = train_ranker(args, data.docs)
    train_s = time.time() - t0
    retriever = BiEncoder.load(args.run / "g0" / "retriever")
    dense = DenseRetriever(retriever, FaissIndex.load(args.run / "indexes" / "round-0"))
    runs = {"dev": read_run(args.run / "dev_runs" / "round-0.trec"), "test": None}
    runs["test"] = dense.retrieve(data.test, 100)
    qs = {"dev": (data.dev, data.dev_qrels), "test": (data.test, data.test_qrels)}
    result: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "train_s": train_s}
    for split in ("dev", "test"):
        queries, qrels = qs[split]
        scored = score_heads(runs[split], queries, ranker, data.docs, args.rerank_k, split)
        _, values = tune_weight(scored, runs[split], qrels, MEASURE)
        result[split] = {str(w): v for w, v in values.items()}
    best = max(WEIGHTS, key=lambda w: (result["dev"][str(w)], -w))
    result["best_w_on_dev"] = best
    result["test_at_best_w"] = result["test"][str(best)]
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
