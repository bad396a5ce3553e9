"""Retrieve (BM25, dense, sparse or hybrid), then optionally rerank: retrievers return a
:data:`Run`.

Example:
    >>> from ar2.index import BM25Index
    >>> docs = [Doc("d1", "cats eat fish"), Doc("d2", "dogs chase balls")]
    >>> pipe = SearchPipeline(BM25Retriever(BM25Index.build(docs)))
    >>> pipe.search("what do cats eat", k=2)
    [Hit(doc_id='d1', score=0.5...)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ar2 import fusion
from ar2._optional import require
from ar2.errors import Ar2Error
from ar2.fusion import RRF_K, rrf
from ar2.types import Doc, Hit, Query, Run

if TYPE_CHECKING:
    from ar2.encoders import BiEncoder, CrossEncoder
    from ar2.index import BM25Index, FaissIndex, SparseIndex


class Retriever(Protocol):
    """First stage: ``retrieve(queries, k)`` returns the top ``k`` hits per query."""

    def retrieve(self, queries: Sequence[Query], k: int) -> Run: ...


class Ranker(Protocol):
    """Second stage: ``rerank(query, hits)`` re-scores hits and returns them best first."""

    def rerank(self, query: Query, hits: Sequence[Hit]) -> list[Hit]: ...


class BM25Retriever:
    """Lexical retrieval from a :class:`~ar2.index.BM25Index`."""

    def __init__(self, index: BM25Index) -> None:
        self.index = index

    def retrieve(self, queries: Sequence[Query], k: int) -> Run:
        hits = self.index.search([q.text for q in queries], k)
        return {q.id: h for q, h in zip(queries, hits)}

    def score(self, query: Query, docs: Sequence[Doc]) -> np.ndarray:
        """``query``'s BM25 score for each of ``docs`` (indexed documents)."""
        return self.index.score(query.text, [d.id for d in docs])


class DenseRetriever:
    """Encode queries with a :class:`~ar2.encoders.BiEncoder`, search a FAISS index."""

    def __init__(self, encoder: BiEncoder, index: FaissIndex, progress: bool = False) -> None:
        self.encoder, self.index, self.progress = encoder, index, progress

    def retrieve(self, queries: Sequence[Query], k: int) -> Run:
        vectors = self.encoder.encode_queries(queries, progress=self.progress)
        hits = self.index.search(vectors, k)
        return {q.id: h for q, h in zip(queries, hits)}

    def score(self, query: Query, docs: Sequence[Doc]) -> np.ndarray:
        """``query``'s similarity to each of ``docs``, encoded now as the index's were."""
        return self.encoder.encode_docs(docs) @ self.encoder.encode_queries([query])[0]


class SparseRetriever:
    """The inference-free learned sparse retriever: each query becomes the IDF-weighted bag of
    its tokens (:class:`ar2.encoders.sparse.QueryBags`, from the index folder's tokenizer and
    weights: no model runs per query), searched in a :class:`~ar2.index.SparseIndex`."""

    def __init__(self, index: SparseIndex) -> None:
        from ar2.encoders.sparse import QueryBags

        if index.query_tokenizer is None or index.query_weights is None:
            raise Ar2Error(
                "the sparse index holds no query tokenizer or query weights, so it cannot "
                "answer text queries. Fix: build it with `ar2 index --kind sparse --model M`"
            )
        self.index, self.bags = index, QueryBags(index.query_tokenizer, index.query_weights)

    def retrieve(self, queries: Sequence[Query], k: int) -> Run:
        hits = self.index.search(self.bags([q.text for q in queries]), k)
        return {q.id: h for q, h in zip(queries, hits)}


class HybridRetriever:
    """Reciprocal rank fusion of several retrievers, each asked for ``depth`` hits."""

    def __init__(self, retrievers: Sequence[Retriever], depth: int = 100, k_rrf: int = RRF_K):
        self.retrievers, self.depth, self.k_rrf = list(retrievers), depth, k_rrf

    def retrieve(self, queries: Sequence[Query], k: int) -> Run:
        runs = [r.retrieve(queries, max(k, self.depth)) for r in self.retrievers]
        fused = rrf(runs, self.k_rrf)
        return {qid: hits[:k] for qid, hits in fused.items()}


def fetched(docs: Mapping[str, Doc], ids: Sequence[str]) -> Mapping[str, Doc]:
    """The documents of ``ids`` that exist, by id: in one call where the mapping fetches
    many at once (a store's documents: :class:`ar2.index.milvus.StoreDocs`), else the
    mapping itself.

    Example:
        >>> sorted(fetched({"a": Doc("a", "x")}, ["a", "b"]))
        ['a']
    """
    fetch = getattr(docs, "fetch", None)
    return fetch(ids) if fetch is not None else docs  # type: ignore[no-any-return]


def lookup(docs: Mapping[str, Doc], ids: Sequence[str]) -> list[Doc]:
    """The documents of ``ids`` (each must exist), fetched as :func:`fetched` does.

    Example:
        >>> lookup({"a": Doc("a", "x"), "b": Doc("b", "y")}, ["b"])
        [Doc(id='b', text='y', title='')]
    """
    found = fetched(docs, ids)
    return [found[i] for i in ids]


class CrossEncoderRanker:
    """Rerank hits with a :class:`~ar2.encoders.CrossEncoder`; ``docs`` maps ids to documents."""

    def __init__(self, model: CrossEncoder, docs: Mapping[str, Doc]) -> None:
        self.model, self.docs = model, docs

    def rerank(self, query: Query, hits: Sequence[Hit]) -> list[Hit]:
        """``hits`` reordered by the ranker, fused with their scores by its ``fusion_weight``."""
        return fusion.rerank(hits, self.scores(query, hits), self.model.config.fusion_weight)

    def scores(self, query: Query, hits: Sequence[Hit]) -> np.ndarray:
        """The ranker's raw scores of ``hits``, ``(len(hits),)``."""
        return self.model.score(query.text, lookup(self.docs, [h.doc_id for h in hits]))


class SearchPipeline:
    """Retrieve, then (with a ranker) rerank the top ``rerank_k`` hits.

    Hits below ``rerank_k`` keep their retrieval order, scored below every reranked hit.
    """

    def __init__(
        self, retriever: Retriever, ranker: Ranker | None = None, rerank_k: int = 100
    ) -> None:
        self.retriever, self.ranker, self.rerank_k = retriever, ranker, rerank_k

    def run(
        self,
        queries: Sequence[Query],
        k: int,
        progress: bool = False,
        rerank_k: int | None = None,
    ) -> Run:
        """Rankings of depth ``k`` for all ``queries``.

        ``rerank_k`` overrides ``self.rerank_k`` for this call (``0``: no reranking), so one
        pipeline can serve requests that ask for different depths.
        """
        top = self.rerank_k if rerank_k is None else rerank_k
        if self.ranker is None or top <= 0:
            return self.retriever.retrieve(queries, k)
        run = self.retriever.retrieve(queries, max(k, top))
        tqdm = require("tqdm").tqdm
        by_id = {q.id: q for q in queries}
        for qid in tqdm(list(run), desc="reranking", unit="query", disable=not progress):
            run[qid] = self._rerank_one(by_id[qid], run[qid], top)[:k]
        return run

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """Hits for one query string."""
        return self.run([Query("query", query)], k)["query"]

    def _rerank_one(self, query: Query, hits: list[Hit], top: int) -> list[Hit]:
        assert self.ranker is not None
        return fusion.with_tail(self.ranker.rerank(query, hits[:top]), hits[top:])
