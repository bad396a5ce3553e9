"""The end of a run: final models and index, the test comparison, and the training plots."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ar2 import fusion
from ar2._io import atomic_write_bytes
from ar2.config import AR2Config
from ar2.encoders import BiEncoder, CrossEncoder
from ar2.pipeline import CrossEncoderRanker
from ar2.train.average import INDEX, averaged_rounds
from ar2.train.data import TrainData
from ar2.types import Doc, Hit, Query, Run

if TYPE_CHECKING:
    from ar2.index import FaissIndex

log = logging.getLogger(__name__)

SYSTEMS = ("bm25", "start", "g0", "ar2-g", "ar2-g+d", "ar2-d")
CHAIN = ("start", "g0", "ar2-g", "ar2-g+d")
"""The stages the report tests each against the one before (ar2-d, the ranker alone, is a
row beside them)."""


def final_report(
    data_dir: Path,
    out: Path,
    data: TrainData,
    retriever: BiEncoder,
    ranker: CrossEncoder,
    cfg: AR2Config,
    delivered: int | None = None,
    averaged: bool = False,
) -> dict[str, Any]:
    """Save ``retriever/``, ``ranker/``, ``index/`` (the models of round ``delivered``, by
    default the last; ``averaged``: ``retriever`` is the average of the last rounds', indexed
    in ``indexes/averaged``, :mod:`ar2.train.average`); compare the systems on test; plot."""
    from ar2.index import FaissIndex
    from ar2.train.recipes import RECIPES
    from ar2.train.rounds import fusion_weight

    chosen = cfg.rounds if delivered is None else delivered
    retriever.save(out / "retriever")
    weight = fusion_weight(out, chosen, "adore" if cfg.adore.steps else None)
    ranker.config = dataclasses.replace(ranker.config, fusion_weight=weight)
    ranker.save(out / "ranker")
    final = BiEncoder.load(out / "retriever")
    index = FaissIndex.load(out / "indexes" / (INDEX if averaged else f"round-{chosen}"), mmap=True)
    index.save(out / "index", {"encoder": final.describe()}, docs=data.corpus)
    plot_training(out)
    if not data.test:
        return {}
    runs, info = _test_runs(out, data, final, cfg)
    info["training"] = _training_note(out, data, cfg) | {
        "delivered": f"round {chosen} of {cfg.rounds} (deliver = {cfg.deliver!r}: "
        + ("the best dev G)" if cfg.deliver == "best" else "the last round)")
        + (f"; its retriever averaged over rounds {averaged_rounds(chosen, cfg.average_rounds)}"
           if averaged else "")
        + (f"; then its query tower trained {cfg.adore.steps} ADORE steps against that "
           "round's index (adore/retriever)" if cfg.adore.steps else ""),
        "recipe": cfg.recipe,
    }  # fmt: skip
    then = RECIPES[cfg.recipe].then
    if then:
        info["training"]["then"] = (f"{then}/: `ar2 {then}` over this run, with its defaults "
                                    f"(its report.md)")  # fmt: skip
    from ar2.comparison import EvalJob, score_and_report

    job = EvalJob(data_dir, "test", SYSTEMS, out, reranker=str(out / "ranker"),
                  rerank_k=cfg.rerank_k, chain=CHAIN)  # fmt: skip
    results = score_and_report(job, runs, (data.test, data.test_qrels), data.corpus, info)
    _cards(data_dir, out, cfg, results, chosen)
    return results


def _cards(data_dir: Path, out: Path, cfg: AR2Config, results: dict[str, Any], chosen: int) -> None:
    """The retriever's and the ranker's ``README.md`` (:mod:`ar2.train.card`)."""
    from ar2.train.card import DEFAULT_BASE, CardFacts, last_dev, write_cards
    from ar2.train.stage import MetricsLog

    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    dev = last_dev(MetricsLog(out / "metrics.jsonl").records, chosen)
    facts = CardFacts("retriever", "", str(out.resolve()), str(data_dir.resolve()), dev,
                      results, {k: v for k, v in config.items() if k != "data"})  # fmt: skip
    retriever = cfg.retriever_model or DEFAULT_BASE
    ranker = f"this run's G0 retriever ({retriever})" if cfg.ranker_from_g0 else None
    write_cards(out, facts, {"retriever": retriever,
                             "ranker": ranker or cfg.ranker_model or DEFAULT_BASE})  # fmt: skip


def _test_runs(
    out: Path, data: TrainData, final: BiEncoder, cfg: AR2Config
) -> tuple[dict[str, Any], dict[str, Any]]:
    from ar2.index import FaissIndex
    from ar2.pipeline import SearchPipeline
    from ar2.retrievers import bm25, dense

    start = BiEncoder.load(cfg.retriever_model, query_max_length=cfg.query_max_length,
                           doc_max_length=cfg.doc_max_length)  # fmt: skip
    g0 = BiEncoder.load(out / "g0" / "retriever")
    retrievers: dict[str, Any] = {
        "bm25": bm25(data.corpus),
        "start": dense(start, _start_index(out / "indexes" / "start", start, data, cfg)),
        "g0": dense(g0, FaissIndex.load(out / "indexes" / "round-0", mmap=True)),
        "ar2-g": dense(final, FaissIndex.load(out / "index", mmap=True)),
    }
    runs = {name: r.retrieve(data.test, 100) for name, r in retrievers.items()}
    ranker = _AlsoAlone(CrossEncoder.load(out / "ranker"), data.docs)
    runs["ar2-g+d"] = SearchPipeline(retrievers["ar2-g"], ranker, cfg.rerank_k).run(
        data.test, 100, progress=True
    )
    runs["ar2-d"] = {qid: fusion.with_tail(ranker.alone.get(qid, []), hits[cfg.rerank_k :])
                     for qid, hits in runs["ar2-g"].items()}  # fmt: skip
    info = {"bm25": "bm25s over the corpus"} | _dense_info(retrievers, data)
    weight = ranker.model.config.fusion_weight
    info["ar2-g+d"] = (
        f"ar2-g, top {cfg.rerank_k} reranked by (1 - w) z(G) + w z(D), w = {weight} (tuned on dev)"
    )
    info["ar2-d"] = f"ar2-g, top {cfg.rerank_k} reranked by the ranker alone (w = 1)"
    return runs, info


class _AlsoAlone(CrossEncoderRanker):
    """Reranks as its ranker's fusion weight says, and keeps the order of the ranker alone
    (``w = 1``) from the same scores: ar2-d costs no second pass."""

    def __init__(self, model: CrossEncoder, docs: Mapping[str, Doc]) -> None:
        super().__init__(model, docs)
        self.alone: Run = {}

    def scores(self, query: Query, hits: Sequence[Hit]) -> np.ndarray:
        scores = super().scores(query, hits)
        self.alone[query.id] = fusion.rerank(hits, scores, 1.0)
        return scores


def _dense_info(retrievers: dict[str, Any], data: TrainData) -> dict[str, Any]:
    """Each dense system's encoder and what it cut (documents counted once per cut-off, for
    the indexes built earlier in the run)."""
    info: dict[str, Any] = {}
    counted: dict[int, Any] = {}
    for name in ("start", "g0", "ar2-g"):
        encoder = retrievers[name].encoder
        limit = encoder.config.doc_max_length
        if not encoder.cuts["documents"].seen:
            if limit not in counted:
                counted[limit] = dataclasses.replace(encoder.count_cuts(data.corpus))
            encoder.cuts["documents"] = dataclasses.replace(counted[limit])
        info[name] = {"encoder": encoder.source, "truncation": encoder.truncation()}
    final = retrievers["ar2-g"].encoder
    if final.cuts["queries"].cut:
        fix = "--set query_max_length=N (up to what the model takes) if the ends of queries matter"
        log.warning("ar2-g: %s. Fix: %s", final.truncation(), fix)
    return info


def _training_note(out: Path, data: TrainData, cfg: AR2Config) -> dict[str, Any]:
    """How the run trained: its dev split (and the rule that sized it) and the stage lengths it
    ran for this collection (:func:`ar2.config.for_collection`)."""
    from ar2.config import STAGES

    split = json.loads((out / "dev_split.json").read_text(encoding="utf-8"))
    return {
        "training_queries": len(data.train),
        "dev": f"{len(data.dev)} queries: {split.get('rule', split.get('source'))}",
        "steps": {name: getattr(cfg, name).steps for name in STAGES},
        "rule": "a stage with epochs runs min(steps, ceil(epochs x training queries / batch))",
        "seconds": stage_seconds(out),
    }


def stage_seconds(out: Path) -> dict[str, float]:
    """The measured wall-clock seconds of each stage of the run (``metrics.jsonl``): training
    stages, and ``dev-g-R`` (index refresh, mining, dev retrieval), ``dev-gd-R`` (dev rerank)."""
    from ar2.train.stage import MetricsLog

    records = MetricsLog(out / "metrics.jsonl").records
    return {r["stage"]: r["seconds"] for r in records if "seconds" in r}


def _start_index(folder: Path, start: BiEncoder, data: TrainData, cfg: AR2Config) -> FaissIndex:
    """The untrained model's index, built once per run (and shared by ``--warm-start``)."""
    from ar2.index import FaissIndex
    from ar2.index.dense import index_corpus

    if not folder.is_dir():
        ids = [d.id for d in data.corpus]
        index_corpus(start, lambda: data.corpus, ids, folder, cfg.index)
    return FaissIndex.load(folder, mmap=True)


def plot_training(out: Path) -> None:
    """``training.png`` from ``metrics.jsonl`` (:func:`ar2.charts.training_chart`)."""
    from ar2.charts import training_chart
    from ar2.train.stage import MetricsLog

    records = MetricsLog(out / "metrics.jsonl").records
    atomic_write_bytes(out / "training.png", training_chart(records))
