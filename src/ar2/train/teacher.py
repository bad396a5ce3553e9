"""The retriever's teacher in the AR2 rounds: the ranker (AR2), or an ensemble measured on dev.

In AR2 the retriever distils the ranker's scores and is rewarded by them (spec §3.3). When the
ranker knows less than the retriever (docs/ar2.md: dev 0.60-0.67 against 0.73), that teacher
pulls its student down. ``[teacher] kind = "ensemble"`` replaces the ranker's logits by a
per-query normalised mix (:func:`ar2.fusion.mix`, Geng et al.'s ensemble teacher) of:

- ``ranker``: the ranker's logits;
- ``retriever``: the retriever the round starts from (frozen: G0 in round 1);
- ``bm25``: BM25 (bm25s, the run's corpus).

Before a round's retriever steps the teacher is measured on dev: it reranks the top
``rerank_k`` of the dev run that the round's starting retriever retrieved, and each part alone
does the same (``metrics.jsonl``, stage ``teacher-R``; ``dev_runs/round-R.teacher.json``). With
``tune = true`` the weights are chosen there, on a 0.1 grid, so the teacher is by construction
no weaker on dev than the retriever it teaches (``retriever = 1`` is on the grid).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ar2 import distributed
from ar2._io import atomic_write_json
from ar2._optional import require
from ar2.config import TEACHER_PARTS, TeacherConfig
from ar2.data.trec import read_run
from ar2.encoders import BiEncoder, CrossEncoder
from ar2.errors import Ar2Error
from ar2.fusion import fused_run, mix
from ar2.types import Doc, Hit, Qrels, Query, Run

log = logging.getLogger("ar2.train")

if TYPE_CHECKING:
    from pathlib import Path

    from ar2.index import BM25Index, FaissIndex
    from ar2.train.stage import RunContext
    from ar2.train.steps import Batch, Lengths


TUNE_DEPTH = 20
"""Each dev query's top documents, as the run's retriever finds them, that a tuned pair
teacher's mixes rerank (:func:`for_run`)."""


def grid(step: float = 0.1) -> list[dict[str, float]]:
    """Every weighting of :data:`~ar2.config.TEACHER_PARTS` on a ``step`` grid that sums to 1,
    the ranker-heaviest first (so that ties go to it).

    Example:
        >>> len(grid()), grid()[0]
        (66, {'ranker': 1.0, 'retriever': 0.0, 'bm25': 0.0})
    """
    n = round(1 / step)
    points = [(a, b, n - a - b) for a in range(n, -1, -1) for b in range(n - a, -1, -1)]
    return [dict(zip(TEACHER_PARTS, (a / n, b / n, c / n))) for a, b, c in points]


@dataclass
class Teacher:
    """The scores the retriever learns from, for a batch of (query, candidate) groups.

    ``weights`` is ``None`` for AR2's teacher (the ranker's raw logits); otherwise the mix
    ``cfg.scale · Σ w_i norm(part_i)`` over the parts of weight > 0. ``ranker`` may be
    ``None`` where the mix gives it no weight (``ar2 pretrain``'s teacher).
    """

    ranker: CrossEncoder | None
    cfg: TeacherConfig
    weights: dict[str, float] | None = None
    prior: BiEncoder | None = None
    bm25: BM25Index | None = None

    def __post_init__(self) -> None:
        if self.ranker is None and (self.weights or {"ranker": 1.0}).get("ranker", 0) > 0:
            raise Ar2Error(
                "a teacher without a ranker, and its weights give the ranker weight. "
                "Fix: pass the ranker, or weights with ranker = 0"
            )

    def batch_scores(self, batch: Batch, run_cfg: Lengths) -> Any:
        """``(B, M)`` teacher scores of each query's group (no gradient); ``run_cfg`` gives
        the training cut-offs (an :class:`~ar2.config.AR2Config` or a
        :class:`~ar2.config.PretrainConfig`). A part of weight 0 is not computed, so an
        ensemble without the ranker needs none (``ar2 pretrain``'s teacher). The ranker's
        logits are on its device; a mix is float32 on the CPU (callers move it to the
        student's scores)."""
        torch = require("torch")
        weights = self.weights or {"ranker": 1.0}
        with torch.no_grad():
            parts = {}
            if weights.get("ranker", 0) > 0:
                logits = self._ranker_scores(batch, run_cfg)  # (B, M)
                if self.weights is None:
                    return logits
                parts["ranker"] = logits.float().cpu().numpy()
            if weights.get("retriever", 0) > 0:
                parts["retriever"] = self._prior_scores(batch, run_cfg)
            if weights.get("bm25", 0) > 0:
                parts["bm25"] = self._bm25_scores(batch)
        rows = [
            mix({k: v[b] for k, v in parts.items()}, weights, self.cfg.norm, self.cfg.scale)
            for b in range(len(batch.queries))
        ]
        return torch.tensor(np.stack(rows), dtype=torch.float32)  # (B, M)

    def _ranker_scores(self, batch: Batch, run_cfg: Lengths) -> Any:
        from ar2.train.steps import ranker_scores, train_pair_length

        assert self.ranker is not None, "a teacher with a ranker weight needs the ranker"
        self.ranker.model.eval()
        return ranker_scores(self.ranker, batch, train_pair_length(run_cfg))  # (B, M)

    def _prior_scores(self, batch: Batch, run_cfg: Lengths) -> np.ndarray:
        assert self.prior is not None, "an ensemble with a retriever weight needs the prior"
        q = self.prior.embed_queries(batch.queries)  # (B, dim)
        d = self.prior.embed_docs(batch.docs, run_cfg.train_doc_max_length)  # (B * M, dim)
        groups = d.view(len(batch.queries), batch.group_size, -1)  # (B, M, dim)
        return (q.unsqueeze(1) * groups).sum(-1).float().cpu().numpy()  # (B, M)

    def _bm25_scores(self, batch: Batch) -> np.ndarray:
        assert self.bm25 is not None, "an ensemble with a bm25 weight needs the index"
        m = batch.group_size
        return np.stack([
            self.bm25.score(q.text, [d.id for d in batch.docs[i * m : (i + 1) * m]])
            for i, q in enumerate(batch.queries)
        ])  # fmt: skip


def for_round(ctx: RunContext, r: int, ranker: CrossEncoder) -> Teacher:
    """Round ``r``'s teacher: the ranker, or the ensemble measured (and with ``tune`` chosen)
    on dev, its record in ``dev_runs/round-R.teacher.json`` (read back on resume)."""
    cfg = ctx.cfg.teacher
    if cfg.kind == "ranker":
        return Teacher(ranker, cfg)
    from ar2.index import BM25Index

    bm25 = BM25Index.build(ctx.data.corpus)
    path = ctx.out / "dev_runs" / f"round-{r}.teacher.json"
    if not path.is_file():
        record = measure(ctx, r, ranker, bm25)
        distributed.on_main(atomic_write_json, path, record)
    record = json.loads(path.read_text())
    ctx.metrics.write({"stage": f"teacher-{r}", "round": r, "teacher_dev": record["dev"],
                       "weights": record["weights"], "seconds": record["seconds"]})  # fmt: skip
    prior = None  # the round's starting retriever, loaded only when the mix weighs it
    if record["weights"].get("retriever", 0) > 0:
        prior = BiEncoder.load(ctx.out / ("g0" if r == 1 else f"rounds/{r - 1}") / "retriever")
    return Teacher(ranker, cfg, record["weights"], prior, bm25)


def measure(ctx: RunContext, r: int, ranker: CrossEncoder, bm25: BM25Index) -> dict[str, Any]:
    """Score the dev run's top ``rerank_k`` with every part, and rerank it with the teacher
    (the configured weights, or with ``tune`` the best of :func:`grid`) and with each part
    alone; the record of ``round-R.teacher.json``."""
    from ar2.train.rounds import split_queries

    cfg, data, began = ctx.cfg, ctx.data, time.perf_counter()
    run = read_run(ctx.out / "dev_runs" / f"round-{r - 1}.trec")

    def score(queries: Sequence[Query]) -> dict[str, tuple[list[Hit], dict[str, np.ndarray]]]:
        return dev_parts(run, queries, ranker, bm25, data.docs, cfg.rerank_k, f"teacher {r}")

    parts = split_queries(score, data.dev)
    record = choose(parts, run, data.dev_qrels, cfg.teacher, cfg.eval_measure)
    return record | {"rerank_k": cfg.rerank_k, "seconds": round(time.perf_counter() - began, 2)}


def choose(
    parts: Mapping[str, tuple[list[Hit], dict[str, np.ndarray]]],
    run: Run,
    qrels: Qrels,
    cfg: TeacherConfig,
    measure: str,
) -> dict[str, Any]:
    """The teacher's weights and its dev record: each query's ``parts`` (its hits with every
    part's scores, :func:`dev_parts`) reranked by the mix of ``cfg``'s weights, or with
    ``cfg.tune`` by the best of :func:`grid` on ``qrels`` (ties: the ranker-heaviest), and by
    each part alone."""
    from ar2.evaluate import evaluate

    def value(weights: Mapping[str, float]) -> float:
        scored = {
            qid: (hits, mix(p, weights, cfg.norm, cfg.scale)) for qid, (hits, p) in parts.items()
        }
        return evaluate(fused_run(scored, run, 1.0), qrels, [measure])[measure]

    alone = {part: value({part: 1.0}) for part in TEACHER_PARTS}
    if cfg.tune:
        tried = [(value(w), w) for w in grid()]
        best, weights = max(tried, key=lambda t: t[0])  # the first of equals: ranker-heaviest
    else:
        weights = cfg.weights()
        best, tried = value(weights), []
    return {
        "weights": weights,
        "dev": {"T": best} | {part: v for part, v in alone.items()},
        "measure": measure,
        "tuned": cfg.tune,
        "grid": [{"weights": w, measure: v} for v, w in tried],
    }


def dev_parts(
    run: Run,
    queries: Sequence[Query],
    ranker: CrossEncoder,
    bm25: BM25Index,
    docs: Mapping[str, Doc],
    k: int,
    desc: str,
) -> dict[str, tuple[list[Hit], dict[str, np.ndarray]]]:
    """Each query's top ``k`` hits of ``run`` with every part's scores for them."""
    from ar2.train.rounds import score_heads

    heads = score_heads(run, queries, ranker, docs, k, desc)
    texts = {q.id: q.text for q in queries}
    return {
        qid: (hits, {
            "ranker": np.asarray(logits, dtype=np.float64),
            "retriever": np.array([h.score for h in hits]),
            "bm25": bm25.score(texts[qid], [h.doc_id for h in hits]),
        })
        for qid, (hits, logits) in heads.items()
    }  # fmt: skip


@dataclass
class PairTeacher:
    """The teacher of a loop that searches a fixed index at every step (ADORE's, with
    ``kd_weight > 0``): its scores of (training query, index row) pairs, each part computed
    once per pair and kept, as the same pairs come back while the query tower moves.

    ``start`` ``(Q, d)`` holds the starting query tower's vectors of the training queries and
    ``doc_vectors`` ``(n, d)`` the index's: their dot products are the ``retriever`` part.
    ``weights`` is ``None`` for the ranker's raw logits (AR2's teacher), else the mix
    ``cfg.scale · Σ w_i norm(part_i)`` over each query's candidates.

    Example:
        >>> from ar2.config import TeacherConfig
        >>> t = PairTeacher(["q"], ["d0", "d1"], {}, np.eye(2, dtype=np.float32),
        ...                 np.array([[0.2, 0.8]], np.float32), None, None,
        ...                 {"ranker": 0.0, "retriever": 1.0, "bm25": 0.0}, TeacherConfig())
        >>> t.scores([0], np.array([[1, 0]])).tolist()  # min-max over the pair, times 10
        [[10.0, 0.0]]
    """

    queries: Sequence[str]
    ids: Sequence[str]
    docs: Mapping[str, Doc]
    doc_vectors: np.ndarray
    start: np.ndarray
    ranker: CrossEncoder | None
    bm25: BM25Index | None
    weights: dict[str, float] | None
    cfg: TeacherConfig

    def __post_init__(self) -> None:
        self.kept: dict[str, dict[tuple[int, int], float]] = {p: {} for p in TEACHER_PARTS}

    def scores(self, picks: Sequence[int], rows: np.ndarray) -> Any:
        """``(B, K)`` float32 teacher scores of the index rows ``rows`` ``(B, K)`` for the
        training queries ``picks`` (B indices into ``queries``)."""
        torch = require("torch")
        weights = self.weights or {"ranker": 1.0}
        used = [part for part in TEACHER_PARTS if weights.get(part, 0) > 0]
        for part in used:
            self._fill(part, picks, rows)
        table = [
            {part: np.array([self.kept[part][q, int(d)] for d in row]) for part in used}
            for q, row in zip(picks, rows)
        ]
        if self.weights is None:
            out = np.stack([t["ranker"] for t in table])
        else:
            out = np.stack([mix(t, self.weights, self.cfg.norm, self.cfg.scale) for t in table])
        return torch.tensor(out, dtype=torch.float32)  # (B, K)

    def _fill(self, part: str, picks: Sequence[int], rows: np.ndarray) -> None:
        kept = self.kept[part]
        todo = sorted({(q, int(d)) for q, row in zip(picks, rows) for d in row} - kept.keys())
        if not todo:
            return
        if part == "retriever":
            values = [float(self.start[q] @ self.doc_vectors[d]) for q, d in todo]
        elif part == "bm25":  # one pass over the corpus per query
            assert self.bm25 is not None, "a teacher with a bm25 weight needs the index"
            by_query: dict[int, list[int]] = {}
            for q, d in todo:
                by_query.setdefault(q, []).append(d)
            todo, values = [], []
            for q, found in by_query.items():
                todo += [(q, d) for d in found]
                values += self.bm25.score(self.queries[q], [self.ids[d] for d in found]).tolist()
        else:
            assert self.ranker is not None, "a teacher with a ranker weight needs the ranker"
            pairs = [(self.queries[q], self.ranker.doc_text(self.docs[self.ids[d]]))
                     for q, d in todo]  # fmt: skip
            values = self.ranker.score_pairs(pairs).tolist()
        kept.update(zip(todo, values))


def check_ranker(run: Path) -> None:
    """Refuse, before anything is written, a ``kd_weight > 0`` over a run without a ranker."""
    if not (run / "ranker").is_dir():
        raise Ar2Error(
            f"{run}: no ranker/, which the teacher of kd_weight > 0 scores with. "
            "Fix: use a run that trained a ranker, or kd_weight = 0"
        )


def for_run(
    out: Path, run: Path, data_dir: Path, corpus: Sequence[Doc], retriever: BiEncoder,
    exact: FaissIndex, vectors: np.ndarray, queries: Sequence[str], cfg: TeacherConfig,
    measure: str,
) -> PairTeacher:  # fmt: skip
    """The :class:`PairTeacher` of a command over the finished ``run`` (``ar2 adore``'s and
    ``ar2 sparse``'s ``kd_weight > 0``) for its training ``queries``, whose rows are those of
    ``exact`` (the run's index, float ``vectors`` ``(n, d)``; ``corpus`` the run's
    documents): the run's ranker (``kind =
    "ranker"``), or the mix of ``cfg``, the ``retriever`` part ``retriever``'s query vectors
    against ``vectors``; with ``tune`` its weights chosen on the run's dev queries over
    ``retriever``'s top :data:`TUNE_DEPTH` and kept in ``out/teacher.json`` (read back on
    resume)."""
    from ar2.data.beir import load_queries
    from ar2.index import BM25Index
    from ar2.train.derived import run_splits

    by_id = {d.id: d for d in corpus}
    ranker = CrossEncoder.load(run / "ranker")
    start = retriever.encode_queries(list(queries))  # (Q, d)
    if cfg.kind == "ranker":
        return PairTeacher(queries, exact.ids, by_id, vectors, start, ranker, None, None, cfg)
    bm25 = BM25Index.build(corpus)
    path = out / "teacher.json"
    if not path.is_file():
        began = time.perf_counter()
        qrels = run_splits(run, data_dir)["dev"]
        asked = [q for q in load_queries(data_dir / "queries.jsonl") if q.id in qrels]
        hits = exact.search(retriever.encode_queries(asked), TUNE_DEPTH)
        dev_run = {q.id: h for q, h in zip(asked, hits)}
        parts = dev_parts(dev_run, asked, ranker, bm25, by_id, TUNE_DEPTH, "teacher (dev)")
        record = choose(parts, dev_run, qrels, cfg, measure)
        record |= {"rerank_k": TUNE_DEPTH, "seconds": round(time.perf_counter() - began, 2)}
        atomic_write_json(path, record)
    weights = json.loads(path.read_text())["weights"]
    log.info("the teacher's weights: %s", weights)
    return PairTeacher(queries, exact.ids, by_id, vectors, start, ranker, bm25, weights, cfg)
