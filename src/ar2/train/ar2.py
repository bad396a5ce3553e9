"""``run_ar2``: warm-up retriever → mine → warm-up ranker → adversarial rounds → report.

The order of one round follows the released code (spec §3.4, §5.2): refresh the index with the
current retriever and mine negatives, train the ranker on them, then train the retriever against
the frozen ranker. Every stage writes its output atomically and is skipped when that output
exists; inside a stage a rolling checkpoint (models + optimisers, safetensors + JSON) lets
``--resume`` continue after a kill at any point, replaying the same batches.

Run folder::

    config.json  dev_split.json  metrics.jsonl  report.md  report.json  report.png
    g0/retriever/  d0/ranker/  mined/round-R/  rounds/R/{retriever,ranker}/
    adore/retriever/                     # with [adore] steps (the adore recipe)
    repconc/  sparse/                    # the repconc and sparse recipes' artifacts
    retriever/  ranker/  index/          # the final models and index
    checkpoints/<stage>/                 # rolling training state
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ar2 import distributed
from ar2._io import atomic_write_json
from ar2._optional import require
from ar2._outdir import clear_folder, is_kind
from ar2.config import AR2Config
from ar2.data.training import TrainingGroup, read_groups
from ar2.encoders import BiEncoder, CrossEncoder
from ar2.errors import Ar2Error
from ar2.train import steps
from ar2.train.average import INDEX, averaged_retriever, retriever_of_round
from ar2.train.checks import check_index, check_settings, ranker_length
from ar2.train.data import TrainData, data_differences, data_record, load_train_data
from ar2.train.estimate import estimate
from ar2.train.rounds import adversarial_rounds, dev_rerank, mine_round
from ar2.train.run_config import (
    config_differences,
    config_json,
    effective,
    for_collection,
    read_run_config,
)
from ar2.train.stage import TOWERS, MetricsLog, RunContext, model_of, stage_record, train_stage
from ar2.train.warm_start import check_warm_start, warm_start

log = logging.getLogger(__name__)


def run_ar2(
    data_dir: Path,
    out: Path,
    cfg: AR2Config,
    resume: bool = False,
    warm_start_from: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a retriever and a ranker with AR2 on a BEIR folder; returns the test results.

    ``warm_start_from``: a finished run whose G0 (and D0) settings match; its warm-ups are
    copied instead of retrained (:mod:`ar2.train.warm_start`). ``resume`` continues the run in
    ``out`` (refused when ``out`` holds something else, or the run's data or config differ; a
    new or empty ``out`` starts a run); ``overwrite`` starts again in an ``out`` that holds
    something else (a run included). Everything is checked before ``config.json`` is written.
    """
    from ar2.train.report import final_report

    if resume and overwrite:
        raise Ar2Error("--resume and --overwrite together. Fix: pass one of them")
    check_settings(cfg)
    with contextlib.ExitStack() as held:  # rank 0 holds the lock of --out
        claim_ = _claim(held, out, (data_dir, cfg.retriever_model, cfg.ranker_model,
                                    warm_start_from), overwrite)  # fmt: skip
        out = distributed.decide_on_main(claim_)
        record = distributed.decide_on_main(_planned, out, cfg, data_dir, resume, overwrite)
        if warm_start_from is not None:
            distributed.decide_on_main(check_warm_start, warm_start_from, record, data_dir)
        check_index(cfg, data_dir)
        then = _follow_up(cfg, data_dir)
        distributed.on_main(_write_config, out, record, overwrite)
        if warm_start_from is not None:
            distributed.on_main(warm_start, out, warm_start_from, record, data_dir)
        data = load_train_data(data_dir, cfg.dev_queries, cfg.seed, out, cfg.dev_fraction)
        cfg, plan = for_collection(cfg, len(data.train))  # stage lengths for this collection
        log.info("stages for %s", plan)
        ctx = RunContext(out, data, cfg, MetricsLog(out / "metrics.jsonl"))
        followed = {then} if then and (out / then / "report.json").is_file() else set()
        distributed.on_main(estimate, cfg, data, ctx.metrics.seen | followed)
        retriever = _warmup_retriever(ctx)
        mine_round(ctx, 0, retriever, None)
        ranker = _warmup_ranker(ctx)
        retriever, ranker = adversarial_rounds(ctx, retriever, ranker)
        chosen = delivered_round(ctx.metrics.records, cfg)
        if chosen != cfg.rounds:
            retriever, ranker = _round_models(out, chosen)
        averaged = averaged_retriever(ctx, chosen)
        final = averaged or retriever
        if cfg.adore.steps:  # the adore recipe: the query tower against the delivered index
            from ar2.train.adore import run_stage

            final = run_stage(ctx, final, ranker, INDEX if averaged else f"round-{chosen}")
        report = distributed.on_main(
            final_report, data_dir, out, data, final, ranker, cfg, chosen, averaged is not None
        )
        if then:  # the recipe's artifact, made from the finished run (OUT/<then>)
            from ar2.train import follow_up

            distributed.on_main(follow_up.run, then, out, cfg.seed)
    return report or {}


def _follow_up(cfg: AR2Config, data_dir: Path) -> str:
    """The command the recipe runs over the finished run (``""``: none), checked before the
    run trains."""
    from ar2.train.recipes import RECIPES

    then = RECIPES[cfg.recipe].then
    if then:
        from ar2.train import follow_up

        follow_up.check(then, data_dir)
    return then


def delivered_round(records: list[dict[str, Any]], cfg: AR2Config) -> int:
    """The round whose models the run delivers (``cfg.deliver``): the last, or the one whose
    retriever scored best on dev (``dev-g-R``; ties: the later round).

    Example:
        >>> records = [{"stage": "dev-g-0", "round": 0, "dev": {"G": 0.34}},
        ...            {"stage": "dev-g-1", "round": 1, "dev": {"G": 0.32}}]
        >>> delivered_round(records, AR2Config(rounds=1)), delivered_round(
        ...     records, AR2Config(rounds=1, deliver="last"))
        (0, 1)
    """
    if cfg.deliver == "last":
        return cfg.rounds
    dev = {r["round"]: r["dev"]["G"] for r in records if r["stage"].startswith("dev-g-")}
    best = max(dev, key=lambda r: (dev[r], r))
    if best != cfg.rounds:
        log.info("delivering round %d's models: dev G %.4f against %.4f after the last round",
                 best, dev[best], dev[cfg.rounds])  # fmt: skip
    return best


def _round_models(out: Path, r: int) -> tuple[BiEncoder, CrossEncoder]:
    """Round ``r``'s saved retriever and ranker (round 0: G0 and D0)."""
    ranker = out / "d0" / "ranker" if r == 0 else out / "rounds" / str(r) / "ranker"
    return BiEncoder.load(retriever_of_round(out, r)), CrossEncoder.load(ranker)


def _claim(
    held: contextlib.ExitStack, out: Path, inputs: tuple[Any, ...], overwrite: bool
) -> Callable[[], Path]:
    """What rank 0 runs to claim ``out`` (:func:`ar2._outdir.claim`), held by ``held``."""
    from ar2._outdir import claim

    return lambda: held.enter_context(claim(out, "run", inputs, overwrite))


def _planned(
    out: Path, cfg: AR2Config, data_dir: Path, resume: bool, overwrite: bool
) -> dict[str, Any]:
    """The ``config.json`` this run will write (its config and data), once ``out`` is checked
    against the wish to resume (on rank 0: it reads the data folder and the run's files)."""
    wanted = config_json(cfg)
    data = data_record(data_dir)
    if resume:
        _check_resume(out, wanted, data, data_dir)
    elif is_kind(out, "run") and not overwrite:
        raise Ar2Error(
            f"{out} holds a run. Fix: pass --resume to continue it, --overwrite to start it "
            "again, or a new --out"
        )
    return wanted | {"data": data}


def _write_config(out: Path, record: dict[str, Any], overwrite: bool) -> None:
    """Write ``config.json`` (rank 0); with ``overwrite``, empty ``out`` first (its lock kept)."""
    if overwrite:
        clear_folder(out)
    atomic_write_json(out / "config.json", record)


def _check_resume(out: Path, wanted: dict[str, Any], data: dict[str, Any], data_dir: Path) -> None:
    """Refuse to resume a run of other settings or other data; with nothing to resume (a new
    or empty ``out``: ``--resume`` is safe to pass always) start a new run."""
    saved = out / "config.json"
    if not saved.is_file():  # a folder that holds something else was refused by claim()
        log.info("nothing to resume in %s: starting a new run", out)
        return
    have = read_run_config(saved)  # compared as they train: epochs and dev rule resolved
    differ = config_differences(effective(have, data_dir), effective(wanted, data_dir))
    if differ:
        raise Ar2Error(
            f"{out}: --resume with a different config ({', '.join(differ)}). "
            "Fix: resume with the run's config and --set values, or start a new --out"
        )
    if "data" not in have:
        log.warning("%s was made before ar2 recorded a run's data: its data is not checked", out)
        return
    changed = data_differences(have["data"], data)
    if changed:
        raise Ar2Error(
            f"{out}: --resume on other data than the run's ({', '.join(changed)} differ from "
            f"{have['data'].get('path')}). Fix: resume with the data folder the run was "
            "started on, or start a new run with another --out"
        )


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config without its data record: the settings compared on ``--resume``."""
    return {k: v for k, v in config.items() if k != "data"}


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
        log = train_stage(out, "g0", {"retriever": model_of(encoder)}, cfg.g0, loss, cfg)
    distributed.on_main(encoder.save, final)
    ctx.metrics.write(stage_record("g0-train", 0, "retriever", log))
    return BiEncoder.load(final)


def _bm25_groups(out: Path, data: TrainData, cfg: AR2Config) -> list[TrainingGroup]:
    """G0's groups, mined with BM25; answer-bearing candidates are no negatives (QA data)."""
    from ar2.mining import answer_check, false_negative_filter, mine, write_mined
    from ar2.retrievers import bm25

    folder = out / "mined" / "bm25"
    if not folder.is_dir():
        retriever = bm25(data.corpus)
        is_answer = answer_check(data.train, data.docs)
        flt = false_negative_filter(
            cfg.mine_rank_start, cfg.mine_relative_margin, retriever, data.docs
        )
        groups = mine(retriever, data.train, data.train_qrels, cfg.mine_k, is_answer, flt)
        provenance = {"round": "bm25", "k": cfg.mine_k, "retriever": "bm25"}
        distributed.on_main(write_mined, folder, groups, provenance, is_answer is not None, flt)
    return read_groups(folder)


def _warmup_ranker(ctx: RunContext) -> CrossEncoder:
    """D0 on round-0 groups (skipped with ``skip_d0``: a fresh, seeded head, spec §5.1)."""
    out, data, cfg = ctx.out, ctx.data, ctx.cfg
    final = out / "d0" / "ranker"
    if final.is_dir():
        return CrossEncoder.load(final)
    require("torch").manual_seed(cfg.seed)  # the new head's initialisation is part of the run
    start = out / "g0" / "retriever" if cfg.ranker_from_g0 else cfg.ranker_model
    ranker = CrossEncoder.load(  # a new head is the plan here: D0 or the rounds train it
        start,
        max_length=ranker_length(cfg, start),
        head=cfg.ranker_head,
        scale=cfg.scale,
        warn_new_head=False,
    )
    if not cfg.skip_d0:
        groups = read_groups(out / "mined" / "round-0")

        def loss(step: int) -> Any:
            batch = steps.draw_batch(groups, data.docs, cfg.d0, cfg.seed, "d0", step)
            return steps.ranker_loss(ranker, batch, steps.train_pair_length(cfg))

        with distributed.data_parallel(ranker, ("model",)):
            log = train_stage(out, "d0", {"ranker": ranker.model}, cfg.d0, loss, cfg)
        ctx.metrics.write(stage_record("d0-train", 0, "ranker", log))
    distributed.on_main(ranker.save, final)
    dev_rerank(ctx, 0, ranker)
    return CrossEncoder.load(final)
