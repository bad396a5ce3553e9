"""Fusing scores: a ranker's with a retriever's (per-query z-scores, interpolated, the weight
tuned on dev), and several retrievers' rankings (reciprocal rank fusion, :func:`rrf`).

A cross-encoder trained on a few hundred queries is a weak ranker on its own, yet its scores carry
signal the retriever lacks. Reranking by ``(1 - w) z(g) + w z(d)`` (``g`` the retrieval scores and
``d`` the ranker's logits of one query's top hits, each z-normalised within the query) keeps both;
``w = 1`` is AR2's reranking by the ranker alone, ``w = 0`` the retriever's order.

Example:
    >>> from ar2.types import Hit
    >>> hits = [Hit("a", 0.9), Hit("b", 0.8), Hit("c", 0.1)]
    >>> [h.doc_id for h in rerank(hits, np.array([0.0, 5.0, 1.0]), 1.0)]
    ['b', 'c', 'a']
    >>> [h.doc_id for h in rerank(hits, np.array([0.0, 5.0, 1.0]), 0.2)]
    ['b', 'a', 'c']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ar2.types import Hit, Qrels, Run

WEIGHTS = tuple(i / 10 for i in range(11))


FLAT = 1e-6
"""Scores whose spread is below this share of their magnitude count as constant: float32
models carry about 7 significant digits, and z-scoring round-off would blow it up to O(1)."""


def zscore(x: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` over one query's hits (all zeros when they are constant, to float32
    precision).

    Example:
        >>> zscore(np.array([1.0, 2.0, 3.0])).round(4).tolist()
        [-1.2247, 0.0, 1.2247]
        >>> zscore(np.array([5.0, 5.0 + 1e-9])).tolist()
        [0.0, 0.0]
    """
    x = np.asarray(x, dtype=np.float64)
    std = x.std()
    flat = std <= FLAT * max(1.0, float(np.abs(x).max(initial=0.0)))
    return np.zeros_like(x) if flat else (x - x.mean()) / std


def minmax(x: np.ndarray) -> np.ndarray:
    """``(x - min) / (max - min)`` over one query's hits, in ``[0, 1]`` (all zeros when they
    are constant, to float32 precision): the normalisation of Geng et al.'s ensemble teacher.

    Example:
        >>> minmax(np.array([1.0, 3.0, 2.0])).tolist()
        [0.0, 1.0, 0.5]
    """
    x = np.asarray(x, dtype=np.float64)
    spread = float(x.max() - x.min()) if x.size else 0.0
    flat = spread <= FLAT * max(1.0, float(np.abs(x).max(initial=0.0)))
    return np.zeros_like(x) if flat else (x - x.min()) / spread


NORMS = {"minmax": minmax, "zscore": zscore}
"""Per-query normalisations by name (``config.TEACHER_NORMS``)."""


def mix(
    parts: Mapping[str, np.ndarray], weights: Mapping[str, float], norm: str, scale: float = 1.0
) -> np.ndarray:
    """``scale · Σ_i w_i norm(parts_i)`` for one query's candidates: several scorers'
    per-query normalised scores, weighted (an ensemble teacher; parts of weight 0 may be
    absent).

    Example:
        >>> parts = {"a": np.array([0.0, 2.0, 4.0]), "b": np.array([1.0, 0.0, 0.0])}
        >>> mix(parts, {"a": 0.5, "b": 0.5}, "minmax", 10.0).tolist()
        [5.0, 2.5, 5.0]
    """
    used = [(name, w) for name, w in weights.items() if w > 0]
    size = len(next(iter(parts.values())))
    total = np.zeros(size)
    for name, w in used:
        total += w * NORMS[norm](parts[name])
    return scale * total


def interpolate(retrieval: np.ndarray, ranking: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - w) z(retrieval) + w z(ranking)`` for one query's hits."""
    return (1.0 - weight) * zscore(retrieval) + weight * zscore(ranking)


def rerank(hits: Sequence[Hit], ranking: np.ndarray, weight: float) -> list[Hit]:
    """``hits`` reordered by their fused scores (ties: doc id), scored with them."""
    if weight >= 1.0:
        fused = np.asarray(ranking, dtype=np.float64)  # the ranker's own logits, unchanged
    else:
        fused = interpolate(np.array([h.score for h in hits]), ranking, weight)
    order = sorted(range(len(hits)), key=lambda i: (-fused[i], hits[i].doc_id))
    return [Hit(hits[i].doc_id, float(fused[i])) for i in order]


def with_tail(head: list[Hit], tail: Sequence[Hit]) -> list[Hit]:
    """``head`` then ``tail`` in its order, every tail hit scored below every head hit."""
    floor = min((h.score for h in head), default=0.0)
    return head + [Hit(h.doc_id, floor - i) for i, h in enumerate(tail, start=1)]


def fused_run(
    scored: Mapping[str, tuple[Sequence[Hit], np.ndarray]],
    depth: Mapping[str, Sequence[Hit]],
    weight: float,
) -> Run:
    """Each query's reranked head (``scored``: hits and ranker scores), then its ``depth`` tail."""
    return {
        qid: with_tail(rerank(hits, ranking, weight), depth.get(qid, [])[len(hits) :])
        for qid, (hits, ranking) in scored.items()
    }


def tune_weight(
    scored: Mapping[str, tuple[Sequence[Hit], np.ndarray]],
    depth: Mapping[str, Sequence[Hit]],
    qrels: Qrels,
    measure: str,
    weights: Sequence[float] = WEIGHTS,
) -> tuple[float, dict[float, float]]:
    """The weight with the best mean ``measure`` (ties: the smaller weight), and every value."""
    from ar2.evaluate import evaluate

    values = {w: evaluate(fused_run(scored, depth, w), qrels, [measure])[measure] for w in weights}
    best = max(weights, key=lambda w: (values[w], -w))
    return best, values


RRF_K = 60
"""The constant of reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009)."""


def rrf(runs: Sequence[Run], k_rrf: int = RRF_K) -> Run:
    """Reciprocal rank fusion: ``score(d) = sum over runs of 1 / (k_rrf + rank(d))``.

    Ties are broken by doc id so the fused ranking is deterministic.

    Example:
        >>> a = {"q": [Hit("x", 9.0), Hit("y", 1.0)]}
        >>> b = {"q": [Hit("y", 0.9), Hit("z", 0.1)]}
        >>> [h.doc_id for h in rrf([a, b])["q"]]
        ['y', 'x', 'z']
    """
    fused: dict[str, dict[str, float]] = {}
    for run in runs:
        for qid, hits in run.items():
            scores = fused.setdefault(qid, {})
            for rank, hit in enumerate(hits, start=1):
                scores[hit.doc_id] = scores.get(hit.doc_id, 0.0) + 1.0 / (k_rrf + rank)
    return {
        qid: [Hit(d, s) for d, s in sorted(scores.items(), key=lambda x: (-x[1], x[0]))]
        for qid, scores in fused.items()
    }
