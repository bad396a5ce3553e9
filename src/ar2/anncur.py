"""``ar2 anncur``: k-NN search with the cross-encoder alone, through a CUR factorisation of
its score matrix (ANNCUR: Yadav et al., "Efficient Nearest Neighbor Search for Cross-Encoder
Models using Matrix Factorization", EMNLP 2022, §3), against retrieve-then-rerank.

Offline, the ranker scores ``k_q`` anchor queries (training queries) against every document:
``R (k_q, N)``. ``k_i`` anchor documents are drawn uniformly; with ``W = R[:, anchors]`` the
documents' embeddings are ``E = pinv(W) R (k_i, N)``. A query is scored by the ranker against
the anchor documents only, ``c (k_i,)``; ``c E`` approximates its scores against all ``N``
documents, whose top ``k_r`` the ranker then scores exactly. A query costs ``k_i + k_r``
ranker calls. Retrieve-then-rerank spends ``k_r`` calls on the retriever's top ``k_r``.

The study measures both against the ranker's own exact top ``k`` over the documents (recall
of the ranker's nearest neighbours, the paper's measure) and against the qrels (nDCG@10), at
each budget of ranker calls, on a seeded subset of the corpus (``docs``; every relevant
document of the measured queries is in it) and ``queries`` test queries. Exact scores of the
measured queries against every document are computed once, so every budget reads the same
ranker outputs a search would compute; the call counts are what a search would spend.

Folder::

    anncur.json  scores/  report.json  report.md  anncur.png
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ar2._io import atomic_write_bytes, atomic_write_json, atomic_write_npy, atomic_write_text
from ar2._optional import require
from ar2.config import ANNCURConfig
from ar2.types import Doc, Hit

ITEMS = (10, 25, 50, 100, 200)
"""Anchor documents ``k_i`` the study tries (those up to ``anchor_items``)."""
RERANK = (10, 25, 50, 100, 200)
"""Documents ``k_r`` the ranker reranks, for both methods."""


def item_embeddings(anchor_scores: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """ANNCUR's document embeddings ``E = pinv(R[:, anchors]) R``, ``(k_i, N)``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> m = rng.normal(size=(6, 2)) @ rng.normal(size=(2, 9))  # a rank-2 score matrix
        >>> e = item_embeddings(m[:4], np.array([0, 5]))
        >>> bool(np.allclose(m[4:, [0, 5]] @ e, m[4:]))  # rank 2: exact for new queries
        True
    """
    intersection = anchor_scores[:, anchors]  # (k_q, k_i)
    return np.linalg.pinv(intersection) @ anchor_scores  # (k_i, N)


def approximate(query_anchor_scores: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """``(B, N)`` approximate scores of queries from their ``(B, k_i)`` anchor scores."""
    return query_anchor_scores @ embeddings


def rerank_top(candidate_scores: np.ndarray, exact: np.ndarray, depth: int, k: int) -> np.ndarray:
    """Each row's top ``k`` columns after its top ``depth`` by ``candidate_scores`` are ordered
    by ``exact``: ``(B, k)`` column indices, best first.

    Example:
        >>> approx = np.array([[3.0, 2.0, 1.0, 0.0]]); exact = np.array([[0.0, 5.0, 9.0, 7.0]])
        >>> rerank_top(approx, exact, depth=2, k=2).tolist()  # doc 2 and 3 were never scored
        [[1, 0]]
    """
    depth = min(depth, candidate_scores.shape[1])
    shortlist = np.argsort(-candidate_scores, axis=1, kind="stable")[:, :depth]  # (B, depth)
    order = np.argsort(-np.take_along_axis(exact, shortlist, 1), axis=1, kind="stable")
    return np.take_along_axis(shortlist, order, 1)[:, :k]  # (B, k)


def recall_of(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of each row's exact top ``k`` (by ``exact`` scores) among ``found``."""
    truth = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    hits = [len(set(f[:k]) & set(t)) / k for f, t in zip(found.tolist(), truth.tolist())]
    return float(np.mean(hits))


def subset(docs: Sequence[Doc], keep: set[str], size: int | None, seed: int) -> list[Doc]:
    """``size`` documents in corpus order: every id in ``keep``, the rest drawn at random
    (the whole corpus when ``size`` is ``None`` or larger)."""
    if size is None or size >= len(docs):
        return list(docs)
    others = [i for i, d in enumerate(docs) if d.id not in keep]
    fill = max(0, size - (len(docs) - len(others)))
    chosen = set(random.Random(seed).sample(others, min(fill, len(others))))
    return [d for i, d in enumerate(docs) if d.id in keep or i in chosen]


def score_rows(
    folder: Path, queries: Sequence[str], docs: Sequence[Doc], score: Callable[..., np.ndarray]
) -> np.ndarray:
    """``(len(queries), len(docs))`` ranker scores, one query's row per file in ``folder``
    (written atomically, so a killed study resumes at the first missing row)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    tqdm = require("tqdm").tqdm
    for i, query in enumerate(tqdm(queries, desc=f"ranker x {len(docs)} docs", unit="query")):
        path = folder / f"{i:05d}.npy"
        if not path.is_file():
            atomic_write_npy(path, np.asarray(score(query, docs), dtype=np.float32))  # (N,)
        rows.append(np.load(path))
    return np.stack(rows) if rows else np.zeros((0, len(docs)), dtype=np.float32)


def sweep(
    anchor_scores: np.ndarray,
    exact: np.ndarray,
    retriever_scores: np.ndarray,
    cfg: ANNCURConfig,
    measure: Callable[[np.ndarray], float],
) -> list[dict[str, Any]]:
    """Every budget of both methods: recall of the ranker's exact top ``k`` and ``measure``
    (nDCG@10 of the found columns against the qrels), with its ranker calls per query."""
    n = exact.shape[1]
    rows = []
    for depth in (d for d in RERANK if d <= n):
        found = rerank_top(retriever_scores, exact, depth, cfg.k)
        rows.append(_row("retrieve-then-rerank", 0, depth, found, exact, cfg.k, measure))
    rng = np.random.default_rng(cfg.seed)
    for items in (i for i in ITEMS if i <= min(cfg.anchor_items, n)):
        anchors = np.sort(rng.choice(n, size=items, replace=False))
        approx = approximate(exact[:, anchors], item_embeddings(anchor_scores, anchors))
        for depth in (d for d in RERANK if d <= n):
            found = rerank_top(approx, exact, depth, cfg.k)
            rows.append(_row("anncur", items, depth, found, exact, cfg.k, measure))
    return rows


def _row(
    method: str, items: int, depth: int, found: np.ndarray, exact: np.ndarray, k: int,
    measure: Callable[[np.ndarray], float],
) -> dict[str, Any]:  # fmt: skip
    return {"method": method, "anchor_items": items, "rerank": depth, "calls": items + depth,
            "recall": recall_of(found, exact, k), "nDCG@10": measure(found)}  # fmt: skip


def run_anncur(
    run: Path, out: Path, cfg: ANNCURConfig, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """The study of ``run``'s ranker into ``out`` (see the module); returns the report."""
    from ar2._outdir import ANNCUR_CONFIG
    from ar2.data.beir import load_corpus, load_qrels, load_queries
    from ar2.encoders import BiEncoder, CrossEncoder
    from ar2.train.derived import derived_output

    with derived_output(run, out, "anncur", ANNCUR_CONFIG, cfg, resume, overwrite) as (out, data):
        qrels = load_qrels(data / "qrels" / "test.tsv")
        texts = {q.id: q.text for q in load_queries(data / "queries.jsonl")}
        tested = sorted(q for q in qrels if q in texts)
        tested = sorted(random.Random(cfg.seed).sample(tested, min(cfg.queries, len(tested))))
        keep = {d for q in tested for d, g in qrels[q].items() if g > 0}
        docs = subset(load_corpus(data / "corpus.jsonl"), keep, cfg.docs, cfg.seed)
        anchors = _anchor_queries(run, data, texts, cfg)
        ranker = CrossEncoder.load(run / "ranker")
        anchor_scores = score_rows(out / "scores" / "anchors", anchors, docs, ranker.score)
        exact = score_rows(out / "scores" / "test", [texts[q] for q in tested], docs, ranker.score)
        retriever = BiEncoder.load(run / "retriever")
        dense = retriever.encode_queries([texts[q] for q in tested]) @ retriever.encode_docs(docs).T

        def ndcg(found: np.ndarray) -> float:
            from ar2.evaluate import evaluate

            hits = {q: [Hit(docs[c].id, float(-r)) for r, c in enumerate(row)]
                    for q, row in zip(tested, found.tolist())}  # fmt: skip
            return evaluate(hits, {q: qrels[q] for q in tested}, ["nDCG@10"])["nDCG@10"]

        report = {"queries": len(tested), "docs": len(docs), "anchor_queries": len(anchors),
                  "k": cfg.k, "rows": sweep(anchor_scores, exact, dense, cfg, ndcg)}  # fmt: skip
        atomic_write_json(out / "report.json", report)
        atomic_write_text(out / "report.md", markdown(report))
        _chart(report, out / "anncur.png")
        return report


def _anchor_queries(run: Path, data: Path, texts: dict[str, str], cfg: ANNCURConfig) -> list[str]:
    """``anchor_queries`` of the run's training queries (its dev split left out), seeded."""
    from ar2.data.beir import load_qrels

    dev = set(json.loads((run / "dev_split.json").read_text())["queries"])
    train = sorted(
        q for q in load_qrels(data / "qrels" / "train.tsv") if q in texts and q not in dev
    )
    picked = random.Random(cfg.seed).sample(train, min(cfg.anchor_queries, len(train)))
    return [texts[q] for q in sorted(picked)]


def markdown(report: dict[str, Any]) -> str:
    """The report's table: each budget of ranker calls, both methods."""
    lines = [
        "# ANNCUR: k-NN with the cross-encoder alone, against retrieve-then-rerank", "",
        f"{report['queries']} test queries over {report['docs']} documents; "
        f"{report['anchor_queries']} anchor queries. Recall: of the ranker's exact top "
        f"{report['k']}.", "",
        "| method | anchor docs k_i | reranked k_r | ranker calls | recall | nDCG@10 |",
        "|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in sorted(report["rows"], key=lambda r: (r["method"], r["calls"])):
        lines.append(f"| {r['method']} | {r['anchor_items']} | {r['rerank']} | {r['calls']} | "
                     f"{r['recall']:.3f} | {r['nDCG@10']:.4f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _chart(report: dict[str, Any], path: Path) -> None:
    from ar2.charts import anncur_chart

    atomic_write_bytes(path, anncur_chart(report["rows"], report["k"]))
