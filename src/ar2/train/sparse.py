"""``run_sparse``: the inference-free learned sparse retriever trained over a finished run
(``ar2 sparse RUN --out OUT``).

Geng et al. 2024 (:mod:`ar2.encoders.sparse`): a document encoder whose weights ``w_d(t)`` a
query reads through the IDFs of its tokens, ``s(q, d) = sum_t idf(t) w_d(t)``. The encoder
starts from the run's G0 retriever (or its start model, ``start = "model"``) with its MLM head
built on the tied word embeddings, its bias set so that a document starts with about
``start_terms`` non-zero terms. Each step takes ``batch_size`` of the run's round-0 groups
(a training query, one of its positives, ``n_neg`` of the negatives G0 mined for it; the
run's dev queries are never among them) and minimises

    L = listwise CE over (positive, negatives) of s(q, .)  +  lambda(step) * FLOPS(documents)

(:func:`ar2.losses.listwise_ce`, :func:`ar2.losses.flops` with :func:`ar2.losses.flops_weight`'s
ramp). With ``kd_weight > 0`` it adds ``w · L_KD``, AR2's distillation (Eqs. 11-12) of a
teacher's scores of the same (query, document) pairs: by default Geng et al.'s heterogeneous
teacher, the min-max normalised mix of the run's ranker, its dense retriever and BM25, its
weights chosen on the run's dev queries (:func:`ar2.train.teacher.for_run`, ``teacher.json``).
The paper distils its ensemble (KL and Margin-MSE) without the labels' term; ``kd_weight = 0``,
the default, learns from the labels alone.

The corpus is then encoded and indexed (:class:`ar2.index.SparseIndex`, Seismic), and the
report compares the sparse retriever with the run's dense one and with BM25 on the run's dev
queries and the test split (nDCG@10, paired t-tests), with the index's size.

Folder::

    sparse.json  metrics.jsonl  checkpoints/  model/  index/  report.json  report.md
    per_query.tsv (the test split)  per_query.dev.tsv (the run's dev queries)
    teacher.json (with kd_weight > 0 and a tuned teacher: its weights and its dev record)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ar2._io import atomic_write_json, atomic_write_text
from ar2._optional import require
from ar2._outdir import SPARSE_CONFIG
from ar2.config import SparseConfig
from ar2.data.training import TrainingGroup, read_groups
from ar2.errors import Ar2Error
from ar2.train.derived import derived_output, run_splits
from ar2.train.stage import MetricsLog, stage_record, train_stage

log = logging.getLogger("ar2.train")

STAGE = "sparse"
MEASURE = "nDCG@10"
GROUPS = Path("mined") / "round-0"
CALIBRATION = 256
"""Documents sampled to set a new MLM head's bias (:func:`ar2.encoders.sparse.calibrate`)."""

Judge = Callable[[Sequence[int], Sequence[Sequence[str]]], Any]
"""``judge(group indices (B,), document ids (B, M)) -> (B, M)`` a teacher's scores."""


def run_sparse(
    run: Path, out: Path, cfg: SparseConfig, resume: bool = False, overwrite: bool = False,
    inside: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Train the inference-free sparse retriever over ``run``'s round-0 groups into ``out``
    (see the module); returns the report. ``inside``: ``out`` is a folder of the run
    (``ar2 train --recipe sparse``)."""
    if not (run / GROUPS / "groups.jsonl").is_file():
        raise Ar2Error(
            f"{run}: no {GROUPS}/groups.jsonl (the negatives G0 mined). Fix: give a run "
            "that `ar2 train` finished"
        )
    if cfg.kd_weight > 0:
        from ar2.train.adore import check_run_index
        from ar2.train.teacher import check_ranker

        check_ranker(run)
        check_run_index(run, "ar2 sparse's teacher (kd_weight > 0)")
    held = derived_output(run, out, "sparse", SPARSE_CONFIG, cfg, resume, overwrite, inside)
    with held as (out, data):
        from ar2.data.beir import load_corpus

        corpus = load_corpus(data / "corpus.jsonl")
        model = _train(out, run, data, corpus, read_groups(run / GROUPS), cfg)
        index = _index(out, model, corpus, cfg)
        return _report(out, run, data, index, corpus)


def start_path(run: Path, cfg: SparseConfig) -> Path:
    """The folder the document encoder starts from."""
    if cfg.start == "g0":
        return run / "g0" / "retriever"
    from ar2.encoders.bi_encoder import default_model_path

    model = json.loads((run / "config.json").read_text()).get("retriever_model")
    return Path(model) if model else default_model_path()


def step_loss(
    model: Any, groups: list[TrainingGroup], docs: dict[str, str], cfg: SparseConfig, step: int,
    judge: Judge | None = None,
) -> Any:  # fmt: skip
    """Step ``step``'s loss: listwise CE over each drawn group's scores plus the ramped FLOPS
    penalty of its documents' weights; with ``judge`` (and ``cfg.kd_weight > 0``) plus
    ``kd_weight`` times the distillation of the teacher's scores of the same documents."""
    from ar2 import losses
    from ar2.encoders import sparse
    from ar2.train import steps

    size, m = cfg.stage.batch_size, 1 + cfg.stage.n_neg
    picks = steps.epoch_picks(len(groups), size, cfg.seed, STAGE, step)
    picked = [groups[i] for i in picks]
    rng = random.Random(f"{cfg.seed}/{STAGE}/{step}")
    ids = []  # (B, m) document ids: each group's positive, then its drawn negatives
    for g in picked:
        negatives = list(g.negatives)
        drawn = rng.sample(negatives, cfg.stage.n_neg) if len(negatives) >= cfg.stage.n_neg else (
            negatives * cfg.stage.n_neg)[: cfg.stage.n_neg]  # fmt: skip
        ids.append([rng.choice(g.positives), *drawn])
    texts = [docs[d] for row in ids for d in row]
    weights = sparse.document_weights(model, texts, cfg.precision)  # (B * m, V)
    queries = sparse.query_weights(model, [g.query.text for g in picked]).to(weights.dtype)
    scores = (weights.view(len(picked), m, -1) * queries[:, None, :]).sum(-1).float()  # (B, m)
    penalty = losses.flops_weight(step + 1, weight=cfg.flops_weight, warmup=cfg.flops_warmup)
    loss = losses.listwise_ce(scores) + penalty * losses.flops(weights=weights.float())
    if judge is None or cfg.kd_weight == 0:
        return loss
    teacher = judge(picks, ids).to(scores.device)  # (B, m)
    return loss + cfg.kd_weight * losses.ar2_distillation(scores, teacher)


def _train(
    out: Path, run: Path, data: Path, corpus: list[Any], groups: list[TrainingGroup],
    cfg: SparseConfig,
) -> Any:  # fmt: skip
    from ar2.encoders import sparse

    final = out / "model"
    if final.is_dir():
        return sparse.load(final)
    groups = [g for g in groups if g.positives and g.negatives]
    if not groups:
        raise Ar2Error(f"{run / GROUPS}: no group has both a positive and a negative. "
                       "Fix: give a run whose mining found negatives")  # fmt: skip
    source = start_path(run, cfg)
    tokenizer = require("transformers", extra="train").AutoTokenizer.from_pretrained(str(source))
    texts = [d.full_text(" ") for d in corpus]
    idf = sparse.corpus_idf(tokenizer, texts, cfg.doc_max_length)
    model = sparse.start(source, idf, cfg.doc_max_length)
    if cfg.start_terms and not sparse.has_head(source):
        sample = random.Random(f"{cfg.seed}/calibrate").sample(texts, min(CALIBRATION, len(texts)))
        threshold = sparse.calibrate(model, sample, cfg.start_terms)
        log.info("the new MLM head keeps logits above %.3f: about %d terms a document",
                 threshold, cfg.start_terms)  # fmt: skip
    docs = {d.id: t for d, t in zip(corpus, texts)}
    judge = _judge(out, run, data, corpus, groups, cfg) if cfg.kd_weight > 0 else None
    log.info("training the sparse encoder on %d groups", len(groups))

    def loss(step: int) -> Any:
        return step_loss(model, groups, docs, cfg, step, judge)

    stage_log = train_stage(out, STAGE, {"retriever": model}, cfg.stage, loss, cfg)
    sparse.save(model, final, str(source), dataclasses.asdict(cfg))
    MetricsLog(out / "metrics.jsonl").write(stage_record(STAGE, 0, "retriever", stage_log))
    return sparse.load(final)


def _judge(
    out: Path, run: Path, data: Path, corpus: list[Any], groups: list[TrainingGroup],
    cfg: SparseConfig,
) -> Judge:  # fmt: skip
    """The teacher of ``kd_weight > 0`` over ``groups`` (:func:`ar2.train.teacher.for_run`,
    with the run's delivered retriever and its index)."""
    import numpy as np

    from ar2.encoders import BiEncoder
    from ar2.index import FaissIndex
    from ar2.train.adore import float_vectors
    from ar2.train.teacher import for_run

    exact = FaissIndex.load(run / "index")
    teacher = for_run(out, run, data, corpus, BiEncoder.load(run / "retriever"), exact,
                      float_vectors(exact), [g.query.text for g in groups], cfg.teacher,
                      MEASURE)  # fmt: skip
    row = {doc: i for i, doc in enumerate(exact.ids)}

    def judge(picks: Sequence[int], ids: Sequence[Sequence[str]]) -> Any:
        return teacher.scores(picks, np.array([[row[d] for d in r] for r in ids]))  # (B, M)

    return judge


def _index(out: Path, model: Any, corpus: list[Any], cfg: SparseConfig) -> Any:
    from ar2.encoders import sparse
    from ar2.index import SparseIndex
    from ar2.index.sparse import index_corpus

    if (out / "index" / "manifest.json").is_file():
        return SparseIndex.load(out / "index")
    log.info("encoding %d documents into the sparse index", len(corpus))
    index = index_corpus(model, corpus, precision=cfg.precision)
    index.save(out / "index", {"encoder": sparse.describe(out / "model")}, docs=corpus)
    return index


def _report(out: Path, run: Path, data: Path, index: Any, corpus: list[Any]) -> dict[str, Any]:
    from ar2.data.beir import load_queries
    from ar2.evaluate import compare, per_query
    from ar2.pipeline import Retriever, SparseRetriever
    from ar2.report import write_per_query
    from ar2.retrievers import bm25, dense_from_folder

    systems: dict[str, Retriever] = {"sparse": SparseRetriever(index), "bm25": bm25(corpus),
                                     "dense": dense_from_folder(run / "index")}  # fmt: skip
    queries = {q.id: q for q in load_queries(data / "queries.jsonl")}
    manifest = json.loads((out / "index" / "manifest.json").read_text())
    report: dict[str, Any] = {"index": {k: manifest[k] for k in ("document_weights", "count")}}
    for split, qrels in run_splits(run, data).items():
        asked = [queries[q] for q in qrels if q in queries]
        values = {name: per_query(r.retrieve(asked, 10), qrels, [MEASURE])
                  for name, r in systems.items()}  # fmt: skip
        tests = {}
        for other in ("dense", "bm25"):
            [row] = compare({"sparse": values["sparse"], other: values[other]}, other, [MEASURE])
            tests[f"sparse - {other}"] = {"diff": row["mean_diff"], "p": row["p_value"]}
        means = {name: statistics.fmean(v[MEASURE].values()) for name, v in values.items()}
        report[split] = {"queries": len(asked), MEASURE: means, "tests": tests}
        write_per_query(out, values, split)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", _markdown(report, out))
    return report


def _markdown(r: dict[str, Any], out: Path) -> str:
    w = r["index"]["document_weights"]
    lines = ["# The inference-free sparse retriever against the run's dense retriever and BM25", "",
             f"| split | queries | sparse {MEASURE} | dense | BM25 | sparse - dense (p) | "
             "sparse - BM25 (p) |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for split in ("dev", "test"):
        if split in r:
            s, t = r[split], r[split]["tests"]
            m = s[MEASURE]
            lines.append(
                f"| {split} | {s['queries']} | {m['sparse']:.4f} | {m['dense']:.4f} | "
                f"{m['bm25']:.4f} | {t['sparse - dense']['diff']:+.4f} "
                f"({t['sparse - dense']['p']:.3g}) | {t['sparse - bm25']['diff']:+.4f} "
                f"({t['sparse - bm25']['p']:.3g}) |"
            )
    lines += ["", f"The index: {r['index']['count']} documents, {w['nonzero']} non-zero weights "
              f"({w['terms_per_document']['mean']} terms a document on average, at most "
              f"{w['terms_per_document']['max']}).", "",
              f"Serve it, with no model per query: `ar2 serve {out / 'index'}`"]  # fmt: skip
    return "\n".join(lines) + "\n"
