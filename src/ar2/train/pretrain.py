"""``run_pretrain``: a retriever and a ranker trained on the corpus alone (``ar2 pretrain``).

No query and no judgement is read: the pairs come from the documents (:mod:`ar2.data.pseudo`:
ICT pseudo-queries and independent crops). It is the no-labels mode, and a domain-adapted start
for ``ar2 train`` (``--model RUN`` starts its retriever from ``RUN/retriever`` and its ranker
from ``RUN/ranker``).

1. The retriever: in-batch contrastive loss over pseudo-pairs (each batch draws documents in a
   seeded per-epoch order; the loss is G0's, with ``retriever.n_neg`` BM25 negatives per
   pair: 0 by default). With ``kd_weight`` it also distils a label-free teacher, the start
   model and BM25 mixed (:func:`label_free_teacher`), over each pair's group.
2. The ranker, started from the pretrained retriever: listwise CE over each pseudo-positive
   and negatives drawn from BM25's top ``negatives_k`` for the pseudo-query, its source
   document left out.
3. A check without labels: held-out ICT queries (their documents never give a training pair)
   search a sample of documents, in which each source document lacks its query sentence; the
   report compares the start model, the pretrained retriever, the pretrained ranker reranking
   its top 20, and BM25.

Run folder::

    pretrain.json  metrics.jsonl  retriever/  ranker/  checkpoints/<stage>/
    report.md  report.json  per_query.tsv  protocol.json  report.png  training.png
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ar2 import distributed, losses
from ar2._io import atomic_write_json
from ar2._optional import require
from ar2._outdir import PRETRAIN_CONFIG, changed_settings, claim, clear_folder, resumed_record
from ar2.config import PretrainConfig, TeacherConfig
from ar2.data.pseudo import ict_pair, pseudo_pair, sentences
from ar2.encoders import BiEncoder, CrossEncoder
from ar2.errors import Ar2Error
from ar2.mining import sample_negatives
from ar2.train import steps
from ar2.train.data import data_differences, data_record
from ar2.train.stage import TOWERS, MetricsLog, model_of, stage_record, train_stage
from ar2.train.teacher import Teacher
from ar2.types import Doc, Query

if TYPE_CHECKING:
    from ar2.index import BM25Index

log = logging.getLogger("ar2.train")

CHECK_SYSTEMS = ("start", "pretrained", "pretrained+ranker", "bm25")
CHECK_RERANK = 20


def run_pretrain(
    data_dir: Path, out: Path, cfg: PretrainConfig, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Pretrain on ``data_dir/corpus.jsonl``; returns the check's figures (see the module)."""
    from ar2.data.beir import load_corpus

    if resume and overwrite:
        raise Ar2Error("--resume and --overwrite together. Fix: pass one of them")
    corpus_file = data_dir / "corpus.jsonl"
    if not corpus_file.is_file():
        raise Ar2Error(f"{corpus_file}: no corpus. Fix: give a BEIR folder with corpus.jsonl")
    with contextlib.ExitStack() as held:
        out = held.enter_context(claim(out, "pretrain", [data_dir, cfg.model], overwrite))
        record = {"config": dataclasses.asdict(cfg), "data": data_record(data_dir, True)}
        _check_resume(out, record, resume, overwrite)
        if overwrite:
            clear_folder(out)
        atomic_write_json(out / PRETRAIN_CONFIG, record)
        corpus = load_corpus(corpus_file)
        train_docs, held_out = split_check(corpus, cfg)
        metrics = MetricsLog(out / "metrics.jsonl")
        log.info("pretraining on %d documents (%d held out for the check): retriever %d "
                 "steps, ranker %d steps", len(train_docs), len(held_out),
                 cfg.retriever.steps, cfg.ranker.steps)  # fmt: skip
        batches = PseudoBatches(train_docs, corpus, cfg)
        retriever = _pretrain_retriever(out, batches, cfg, metrics)
        ranker = _pretrain_ranker(out, batches, cfg, metrics)
        results = check(data_dir, out, (corpus, held_out), (retriever, ranker), cfg)
        _plot(out)
    return results


def _check_resume(out: Path, record: dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Refuse to resume other settings or another corpus; refuse to start over a run."""
    have = resumed_record(out, PRETRAIN_CONFIG, "a pretraining run", resume, overwrite)
    if have is None:
        return
    changed = data_differences(have.get("data", {}), record["data"])
    if changed:
        raise Ar2Error(
            f"{out}: --resume on another corpus than the run's ({', '.join(changed)} differ "
            f"from {have['data'].get('path')}). Fix: resume on that corpus, or a new --out"
        )
    defaults = dataclasses.asdict(PretrainConfig())  # settings added since the run began
    differ = changed_settings(defaults | have["config"], record["config"])
    if differ:
        raise Ar2Error(
            f"{out}: --resume with other settings ({', '.join(differ)}). Fix: resume with the "
            "run's settings (its pretrain.json), or start a new --out"
        )


def split_check(corpus: Sequence[Doc], cfg: PretrainConfig) -> tuple[list[Doc], list[Doc]]:
    """The training documents and the held-out ones of the check (``check_queries`` documents
    of two sentences or more, at most a fifth of those; seeded), which never give a training
    pair.

    Example:
        >>> docs = [Doc(f"d{i}", "One. Two.") for i in range(20)]
        >>> train, held = split_check(docs, PretrainConfig(check_queries=3))
        >>> len(train), len(held), set(train).isdisjoint(held)
        (17, 3, True)
        >>> len(split_check(docs, PretrainConfig(check_queries=10))[1])  # a fifth of 20
        4
    """
    eligible = [d for d in corpus if len(sentences(d.text)) >= 2]
    n = min(cfg.check_queries, len(eligible) // 5)  # at most a fifth of them
    held = random.Random(f"{cfg.seed}/check").sample(eligible, n) if n else []
    ids = {d.id for d in held}
    train = [d for d in corpus if d.id not in ids]
    if not train:
        raise Ar2Error("the corpus has no document left to pretrain on. Fix: lower check_queries")
    return train, held


class PseudoBatches:
    """The batches of a pretraining stage: each step's pseudo-pairs (documents in a seeded
    per-epoch order, each made an ICT or crop pair by the step's random generator), each
    positive followed by ``n_neg`` negatives from BM25's top ``negatives_k`` for its
    pseudo-query, the source document left out."""

    def __init__(self, docs: Sequence[Doc], corpus: Sequence[Doc], cfg: PretrainConfig) -> None:
        self.docs, self.cfg = docs, cfg
        self.by_id = {d.id: d for d in corpus}
        self._bm25: BM25Index | None = None
        self._corpus = corpus

    def batch(self, stage: str, step: int, size: int, n_neg: int) -> steps.Batch:
        from ar2.train.loop import step_rng

        cfg = self.cfg
        rng = step_rng(cfg.seed, stage, step)
        picked = [self.docs[i] for i in steps.epoch_picks(len(self.docs), size, cfg.seed,
                                                           stage, step)]  # fmt: skip
        crops = (cfg.crop_min, cfg.crop_max, cfg.word_delete)
        made = [pseudo_pair(d, rng, cfg.ict_fraction, cfg.ict_keep, crops) for d in picked]
        group_docs: list[Doc] = []
        found = self._negatives([q.text for q, _ in made]) if n_neg else [[]] * len(made)
        for (_, positive), hits in zip(made, found):
            group_docs.append(positive)
            if n_neg:
                pool = [h.doc_id for h in hits if h.doc_id != positive.id][: cfg.negatives_k]
                pool = pool or [
                    d.id for d in rng.sample(list(self.docs), min(n_neg, len(self.docs)))
                ]
                group_docs += [self.by_id[d] for d in sample_negatives(pool, n_neg, rng)]
        return steps.Batch([q for q, _ in made], group_docs).shard(distributed.world())

    def bm25(self) -> BM25Index:
        """BM25 over the corpus (built once): the negatives' source and a teacher's part."""
        from ar2.index import BM25Index

        if self._bm25 is None:
            self._bm25 = BM25Index.build(self._corpus)
        return self._bm25

    def _negatives(self, texts: list[str]) -> list[list[Any]]:
        return self.bm25().search(texts, self.cfg.negatives_k + 1)  # type: ignore[no-any-return]


def label_free_teacher(batches: PseudoBatches, cfg: PretrainConfig) -> Teacher:
    """The teacher of ``kd_weight``: the start model (frozen) and BM25, each min-max
    normalised over a pseudo-query's group and mixed ``1 - teacher_bm25 : teacher_bm25``
    (times ``TeacherConfig.scale``, 10). It reads no query or judgement and needs no ranker.
    BM25 scores each candidate's document as the corpus holds it, so the pseudo-positive's
    source whole (an ICT sentence or the other crop included): it knows the pair."""
    mix_cfg = TeacherConfig(kind="ensemble", ranker=0.0, retriever=1.0 - cfg.teacher_bm25,
                            bm25=cfg.teacher_bm25, norm="minmax")  # fmt: skip
    start = None
    if mix_cfg.retriever > 0:
        start = BiEncoder.load(cfg.model, query_max_length=cfg.query_max_length)
    return Teacher(None, mix_cfg, mix_cfg.weights(), start, batches.bm25())


def distilled_loss(encoder: BiEncoder, teacher: Teacher, batch: steps.Batch,
                   cfg: PretrainConfig) -> Any:  # fmt: skip
    """The retriever's loss with ``kd_weight``: ``pair_weight`` · each pseudo-positive's NLL
    among every passage of the batch (the loss without it) plus ``kd_weight`` · L_KD, the
    cross-entropy of the retriever's group scores to the teacher's softmax (paper Eq. 11)."""
    scores, in_batch = steps.group_scores(
        encoder, batch, cfg.scale, cfg.doc_max_length, in_batch=cfg.pair_weight > 0
    )  # (B, M), (B, W·B·M) or None
    target = teacher.batch_scores(batch, cfg).to(scores.device)  # (B, M), constant
    loss = cfg.kd_weight * losses.ar2_distillation(scores, target)  # ()
    if in_batch is None:
        return loss
    nll = losses.in_batch_nll(in_batch, group=batch.group_size, offset=batch.offset)  # ()
    return cfg.pair_weight * nll + loss  # ()


def _pretrain_retriever(
    out: Path, batches: PseudoBatches, cfg: PretrainConfig, metrics: MetricsLog
) -> BiEncoder:
    final = out / "retriever"
    if final.is_dir():
        return BiEncoder.load(final)
    encoder = BiEncoder.load(cfg.model, query_max_length=cfg.query_max_length)
    name, stage = "pretrain-retriever", cfg.retriever
    teacher = label_free_teacher(batches, cfg) if cfg.kd_weight > 0 else None

    def loss(step: int) -> Any:
        batch = batches.batch(name, step, stage.batch_size, stage.n_neg)
        if teacher is not None:
            return distilled_loss(encoder, teacher, batch, cfg)
        return steps.contrastive_retriever_loss(encoder, batch, cfg.scale, cfg.doc_max_length)

    with distributed.data_parallel(encoder, TOWERS):
        stage_log = train_stage(out, name, {"retriever": model_of(encoder)}, stage, loss, cfg)
    distributed.on_main(encoder.save, final)
    metrics.write(stage_record(name, 0, "retriever", stage_log))
    return BiEncoder.load(final)


def _pretrain_ranker(
    out: Path, batches: PseudoBatches, cfg: PretrainConfig, metrics: MetricsLog
) -> CrossEncoder:
    final = out / "ranker"
    if final.is_dir():
        return CrossEncoder.load(final)
    require("torch").manual_seed(cfg.seed)  # the new head's initialisation is part of the run
    start = out / "retriever" if cfg.ranker_from_retriever else cfg.model
    ranker = CrossEncoder.load(
        start,
        max_length=cfg.ranker_max_length,
        head=cfg.ranker_head,
        scale=cfg.scale,
        warn_new_head=False,
    )
    name, stage = "pretrain-ranker", cfg.ranker

    def loss(step: int) -> Any:
        batch = batches.batch(name, step, stage.batch_size, max(1, stage.n_neg))
        return steps.ranker_loss(ranker, batch, cfg.ranker_max_length)

    with distributed.data_parallel(ranker, ("model",)):
        stage_log = train_stage(out, name, {"ranker": ranker.model}, cfg.ranker, loss, cfg)
    distributed.on_main(ranker.save, final)
    metrics.write(stage_record(name, 0, "ranker", stage_log))
    return CrossEncoder.load(final)


def check_set(
    corpus: Sequence[Doc], held_out: Sequence[Doc], cfg: PretrainConfig
) -> tuple[list[Query], dict[str, dict[str, int]], list[Doc]]:
    """The check's ICT queries, their targets, and the document sample: each held-out
    document gives a sentence as the query and is in the sample without it (as ICT trains:
    finding it takes more than matching the sentence's words, which BM25 would do perfectly).

    Example:
        >>> corpus = [Doc(f"d{i}", f"Alpha {i}. Beta {i}.") for i in range(5)]
        >>> queries, qrels, sample = check_set(corpus, corpus[:1], PretrainConfig(check_docs=3))
        >>> qrels, len(sample), queries[0].text in sample[0].text
        ({'ict:d0': {'d0': 1}}, 3, False)
    """
    rng = random.Random(f"{cfg.seed}/check-queries")
    queries, qrels, targets = [], {}, []
    for doc in held_out:
        query, rest = ict_pair(doc, rng, keep=0.0)
        queries.append(query)
        targets.append(rest)
        qrels[query.id] = {doc.id: 1}
    others = [d for d in corpus if d.id not in {h.id for h in held_out}]
    fill = max(0, min(cfg.check_docs - len(held_out), len(others)))
    sample = targets + random.Random(f"{cfg.seed}/check-docs").sample(others, fill)
    return queries, qrels, sample


def check(
    data_dir: Path,
    out: Path,
    docs: tuple[Sequence[Doc], Sequence[Doc]],
    models: tuple[BiEncoder, CrossEncoder],
    cfg: PretrainConfig,
) -> dict[str, Any]:
    """The label-free check of the report: held-out ICT queries (``docs``: the corpus and the
    held-out documents) against a document sample, with ``models`` (retriever, ranker)."""
    (corpus, held_out), (retriever, ranker) = docs, models
    from ar2.comparison import EvalJob, score_and_report
    from ar2.index import FaissIndex
    from ar2.pipeline import CrossEncoderRanker, SearchPipeline
    from ar2.retrievers import bm25, dense

    if not held_out:
        log.warning("no held-out document of two sentences: the check is skipped")
        return {}
    queries, qrels, sample = check_set(corpus, held_out, cfg)
    start = BiEncoder.load(cfg.model, query_max_length=cfg.query_max_length)
    systems: dict[str, Any] = {"bm25": bm25(sample, "the check's documents")}
    for name, encoder in (("start", start), ("pretrained", retriever)):
        index = FaissIndex.build(encoder.encode_docs(sample, progress=True), [d.id for d in sample])
        systems[name] = dense(encoder, index)
    runs = {name: r.retrieve(queries, 100) for name, r in systems.items()}
    texts = {d.id: d for d in sample}
    alone = dataclasses.replace(ranker.config, fusion_weight=1.0)
    ranker.config = alone
    rerank = SearchPipeline(systems["pretrained"], CrossEncoderRanker(ranker, texts), CHECK_RERANK)
    runs["pretrained+ranker"] = rerank.run(queries, 100, progress=True)
    runs = {name: runs[name] for name in CHECK_SYSTEMS}  # tested against the first: start
    info = {
        "check": f"{len(queries)} held-out ICT queries (a sentence of a document that gave no "
        f"training pair) search {len(sample)} documents; the target is the source document, "
        "there without that sentence",
        "pretrained+ranker": f"the pretrained retriever's top {CHECK_RERANK} ordered by the "
        "pretrained ranker alone",
        "training": {"seconds": {r["stage"]: r["seconds"] for r in
                                 MetricsLog(out / "metrics.jsonl").records}},
    }  # fmt: skip
    job = EvalJob(data_dir, "pseudo-queries (ICT, held out)", CHECK_SYSTEMS, out,
                  measures=("RR@10", "R@1", "R@10"), rerank_k=CHECK_RERANK,
                  chain=CHECK_SYSTEMS[:3])  # fmt: skip
    return score_and_report(job, runs, (queries, qrels), list(sample), info)


def _plot(out: Path) -> None:
    from ar2.train.report import plot_training

    plot_training(out)
