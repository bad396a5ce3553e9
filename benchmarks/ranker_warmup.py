"""How fast does the ranker (MiniLM + a new head) learn on mined groups? Loss per 10 steps.

Not a test. Usage (groups from a run folder of `ar2 train`):

    .venv/bin/python benchmarks/ranker_warmup.py RUN_DIR/mined/round-0 \\
        --lr 1e-4 --head-lr 1e-3 --steps 30 [--precision fp32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ar2.config import StageConfig
from ar2.data.beir import load_corpus
from ar2.data.training import read_groups
from ar2.encoders import CrossEncoder
from ar2.train import steps
from ar2.train.loop import Stepper, seed_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", type=Path, help="a mined groups folder")
    parser.add_argument("--data", type=Path, default=Path("data/scifact"))
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--head-lr", type=float, default=None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-neg", type=int, default=7)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--pooler-identity",
        action="store_true",
        help="start BERT's (untrained) pooler as the identity instead of random",
    )
    args = parser.parse_args()
    docs = {d.id: d for d in load_corpus(args.data / "corpus.jsonl")}
    groups = read_groups(args.groups)
    cfg = StageConfig(args.steps, args.batch_size, args.n_neg, args.lr, head_lr=args.head_lr)
    torch.manual_seed(0)
    ranker = CrossEncoder.load(None, max_length=args.max_length, precision=args.precision)
    if args.pooler_identity:
        with torch.no_grad():
            dense = ranker.model.bert.pooler.dense
            dense.weight.copy_(torch.eye(dense.weight.shape[0]))
            dense.bias.zero_()
    stepper = Stepper(ranker.model, cfg, args.steps)
    ranker.model.train()
    start, losses = time.time(), []
    for step in range(args.steps):
        seed_step(0, "bench", step)
        batch = steps.draw_batch(groups, docs, cfg, 0, "bench", step)
        losses.append(stepper.step(steps.ranker_loss(ranker, batch)))
        if (step + 1) % 10 == 0:
            mean = sum(losses[-10:]) / 10
            print(f"step {step + 1}: mean loss {mean:.3f} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
