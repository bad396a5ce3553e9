"""``run_ar2``: warm-up retriever → mine → warm-up ranker → adversarial rounds → report.

The order of one round follows the released code (spec §3.4, §5.2): refresh the index with the
current retriever and mine negatives, train the ranker on them, then train the retriever against
the frozen ranker. Every stage writes its output atomically and is skipped when that output
exists; inside a stage a rolling checkpoint (models + optimisers, safetensors + JSON) lets
``--resume`` continue after a kill at any point, replaying the same batches.

Run folder::

    config.json  dev_split.json  metrics.jsonl  report.md  report.json  report.png
    g0/retriever/  d0/ranker/  mined/round-R/  rounds/R/{retriever,ranker}/
    retriever/  ranker/  index/          # the final models and index
    checkpoints/<stage>/                 # rolling training state
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ar2 import distributed
from ar2._io import atomic_write_json
from ar2._optional import require
from ar2.config import AR2Config, config_differences, config_json, read_run_config
from ar2.data.training import TrainingGroup, read_groups, write_groups
from ar2.encoders import BiEncoder, CrossEncoder
from ar2.errors import Ar2Error
from ar2.train import steps
from ar2.train.data import TrainData, load_train_data
from ar2.train.rounds import adversarial_rounds, dev_rerank, mine_round
from ar2.train.stage import TOWERS, MetricsLog, RunContext, model_of, tail_mean, train_stage
from ar2.train.warm_start import warm_start

log = logging.getLogger(__name__)


def run_ar2(
    data_dir: Path,
    out: Path,
    cfg: AR2Config,
    resume: bool = False,
    warm_start_from: Path | None = None,
) -> dict[str, Any]:
    """Train a retriever and a ranker with AR2 on a BEIR folder; returns the test results.

    ``warm_start_from``: a finished run whose G0 (and D0) settings match; its warm-ups are
    copied instead of retrained (:mod:`ar2.train.warm_start`).
    """
    from ar2.train.report import final_report

    wanted = _prepare_out(out, cfg, resume)
    if warm_start_from is not None:
        distributed.on_main(warm_start, out, warm_start_from, wanted)
    data = load_train_data(data_dir, cfg.dev_queries, cfg.seed, out)
    ctx = RunContext(out, data, cfg, MetricsLog(out / "metrics.jsonl"))
    retriever = _warmup_retriever(ctx)
    mine_round(ctx, 0, retriever, None)
    ranker = _warmup_ranker(ctx)
    retriever, ranker = adversarial_rounds(ctx, retriever, ranker)
    report = distributed.on_main(final_report, data_dir, out, data, retriever, ranker, cfg)
    return report or {}


def _prepare_out(out: Path, cfg: AR2Config, resume: bool) -> dict[str, Any]:
    saved = out / "config.json"
    wanted = config_json(cfg)
    if saved.is_file():
        if not resume:
            raise Ar2Error(f"{out} holds a run. Fix: pass --resume to continue it, or a new --out")
        differ = config_differences(read_run_config(saved), wanted)
        if differ:
            raise Ar2Error(
                f"{out}: --resume with a different config ({', '.join(differ)}). "
                "Fix: use the run's config"
            )

    def write() -> None:  # on_main: every rank has checked before rank 0 writes
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(saved, wanted)

    distributed.on_main(write)
    return wanted


def _warmup_retriever(ctx: RunContext) -> BiEncoder:
    """G0: in-batch negatives plus one BM25 hard negative per query (spec §5.1 stage 1)."""
    out, data, cfg = ctx.out, ctx.data, ctx.cfg
    final = out / "g0" / "retriever"
    if final.is_dir():
        return BiEncoder.load(final)
    encoder = BiEncoder.load(
        cfg.retriever_model,
        query_max_length=cfg.query_max_length,
        doc_max_length=cfg.doc_max_length,
    )
    groups = _bm25_groups(out, data, cfg)

    def loss(step: int) -> Any:
        batch = steps.draw_batch(groups, data.docs, cfg.g0, cfg.seed, "g0", step)
        return steps.contrastive_retriever_loss(encoder, batch, cfg.scale, cfg.train_doc_max_length)

    with distributed.data_parallel(encoder, TOWERS):
        losses = train_stage(out, "g0", {"retriever": model_of(encoder)}, cfg.g0, loss, cfg.seed)
    distributed.on_main(encoder.save, final)
    ctx.metrics.write(
        {"stage": "g0-train", "round": 0, "model": "retriever", "loss": tail_mean(losses)}
    )
    return BiEncoder.load(final)


def _bm25_groups(out: Path, data: TrainData, cfg: AR2Config) -> list[TrainingGroup]:
    from ar2.index import BM25Index
    from ar2.mining import mine
    from ar2.pipeline import BM25Retriever

    folder = out / "mined" / "bm25"
    if not folder.is_dir():
        retriever = BM25Retriever(BM25Index.build(data.corpus))
        groups = mine(retriever, data.train, data.train_qrels, cfg.mine_k)
        provenance = {"round": "bm25", "k": cfg.mine_k, "retriever": "bm25"}
        distributed.on_main(write_groups, folder, groups, provenance)
    return read_groups(folder)


def _warmup_ranker(ctx: RunContext) -> CrossEncoder:
    """D0 on round-0 groups (skipped with ``skip_d0``: a fresh, seeded head, spec §5.1)."""
    out, data, cfg = ctx.out, ctx.data, ctx.cfg
    final = out / "d0" / "ranker"
    if final.is_dir():
        return CrossEncoder.load(final)
    require("torch").manual_seed(cfg.seed)  # the new head's initialisation is part of the run
    length = cfg.ranker_max_length or cfg.query_max_length + cfg.doc_max_length
    start = out / "g0" / "retriever" if cfg.ranker_from_g0 else cfg.ranker_model
    ranker = CrossEncoder.load(start, max_length=length)
    if not cfg.skip_d0:
        groups = read_groups(out / "mined" / "round-0")

        def loss(step: int) -> Any:
            batch = steps.draw_batch(groups, data.docs, cfg.d0, cfg.seed, "d0", step)
            return steps.ranker_loss(ranker, batch, steps.train_pair_length(cfg))

        with distributed.data_parallel(ranker, ("model",)):
            losses = train_stage(out, "d0", {"ranker": ranker.model}, cfg.d0, loss, cfg.seed)
        ctx.metrics.write(
            {"stage": "d0-train", "round": 0, "model": "ranker", "loss": tail_mean(losses)}
        )
    distributed.on_main(ranker.save, final)
    dev_rerank(ctx, 0, ranker)
    return CrossEncoder.load(final)
