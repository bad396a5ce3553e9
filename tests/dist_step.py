"""One training step of each loss, for tests/test_distributed.py: run under torchrun it writes
each rank's loss and gradients; imported, :func:`step_results` computes them in one process.

    torchrun --standalone --nproc_per_node 2 tests/dist_step.py RETRIEVER RANKER OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

KINDS = ("g0", "ranker", "ar2", "ar2-in-batch", "dexml", "tas-b")
WORDS = ["cats", "dogs", "birds", "fish", "cancer", "gene", "brain", "heart", "drug", "mice"]


def toy_groups() -> tuple[list[Any], dict[str, Any]]:
    """8 queries, each with a positive and 3 negatives, over 20 documents; q0 has a second
    positive, d3, which is q3's positive too (so DEXML's mask has work to do)."""
    from ar2.data.training import TrainingGroup
    from ar2.types import Doc, Query

    docs = {
        f"d{i}": Doc(f"d{i}", f"{WORDS[i % 10]} {WORDS[(3 * i) % 10]} study w{i}", WORDS[i % 10])
        for i in range(20)
    }
    groups = [
        TrainingGroup(
            Query(f"q{i}", f"{WORDS[i % 10]} {WORDS[(i + 4) % 10]}"),
            (f"d{i}", "d3") if i == 0 else (f"d{i}",),
            tuple(f"d{(i + j) % 20}" for j in (1, 5, 9, 13)),
        )
        for i in range(8)
    ]
    return groups, docs


def step_results(retriever_dir: str, ranker_dir: str) -> dict[str, Any]:
    """``{kind: (loss, {param name: gradient})}`` for one step of each loss on this process's
    share of the global batch (all of it without torchrun)."""
    from ar2 import distributed
    from ar2.config import AR2Config, SamplingConfig, StageConfig
    from ar2.encoders import BiEncoder, CrossEncoder
    from ar2.train import steps, tas
    from ar2.train.stage import TOWERS
    from ar2.train.teacher import Teacher

    groups, docs = toy_groups()
    stage = StageConfig(steps=1, batch_size=8, n_neg=3)
    results = {}
    for kind in KINDS:
        encoder = BiEncoder.load(retriever_dir, precision="fp32")
        ranker = CrossEncoder.load(ranker_dir, precision="fp32")
        encoder.doc_model.eval(), ranker.model.eval()  # no dropout: masks differ per shard
        batch = steps.draw_batch(groups, docs, stage, 7, kind, 3)
        cfg = AR2Config(in_batch=kind == "ar2-in-batch", train_doc_max_length=None)
        owner, attrs = (ranker, ("model",)) if kind == "ranker" else (encoder, TOWERS)
        module = ranker.model if kind == "ranker" else encoder.doc_model
        with distributed.data_parallel(owner, attrs):
            if kind == "g0":
                loss = steps.contrastive_retriever_loss(encoder, batch, cfg.scale)
            elif kind == "dexml":
                loss = steps.decoupled_retriever_loss(encoder, batch, cfg.scale)
            elif kind == "tas-b":  # topic batches, balanced negatives, Margin-MSE + in-batch
                tas_cfg = AR2Config(
                    train_doc_max_length=None, adv_lambda=0.0, kd_loss="margin_mse",
                    in_batch=True, in_batch_masks_positives=True,
                    retriever=StageConfig(batch_size=8, n_neg=2),
                    sampling=SamplingConfig(topic_batches=True, balanced_margins=True, pool=3),
                )  # fmt: skip
                teacher = Teacher(ranker, tas_cfg.teacher)
                topics = [[0, 2, 4, 6, 7], [1, 3, 5]]
                drawn, target = tas.draw(groups, docs, tas_cfg, kind, 3, topics, teacher)
                loss = steps.ar2_retriever_step_loss(encoder, teacher, drawn, tas_cfg, target)
            elif kind == "ranker":
                loss = steps.ranker_loss(ranker, batch)
            else:
                teacher = Teacher(ranker, cfg.teacher)  # AR2's: the ranker's logits
                loss = steps.ar2_retriever_step_loss(encoder, teacher, batch, cfg)
            loss.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        results[kind] = (distributed.all_mean(float(loss.detach())), grads)
    return results


def main(argv: list[str]) -> None:
    from safetensors.torch import save_file

    from ar2 import distributed

    retriever_dir, ranker_dir, out = argv
    w = distributed.init_from_env()
    results = step_results(retriever_dir, ranker_dir)
    folder = Path(out)
    for kind, (loss, grads) in results.items():
        save_file(grads, str(folder / f"{kind}-rank{w.rank}.safetensors"))
        (folder / f"{kind}-rank{w.rank}.json").write_text(json.dumps({"loss": loss}))
    distributed.finish()


if __name__ == "__main__":
    main(sys.argv[1:])
