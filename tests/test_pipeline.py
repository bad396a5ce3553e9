"""Pipeline: fusion against a hand computation, reranking, and drift-free dense loading."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from ar2.fusion import rrf
from ar2.index import BM25Index, FaissIndex
from ar2.pipeline import (
    BM25Retriever,
    DenseRetriever,
    HybridRetriever,
    SearchPipeline,
)
from ar2.types import Doc, Hit, Query, Run

DOCS = [
    Doc("a", "cats eat fish"),
    Doc("b", "dogs chase balls"),
    Doc("c", "fish eat smaller fish"),
    Doc("d", "birds sing songs"),
]


class FixedRetriever:
    def __init__(self, run: Run) -> None:
        self.run = run

    def retrieve(self, queries: Sequence[Query], k: int) -> Run:
        return {q.id: self.run[q.id][:k] for q in queries}


class ReverseRanker:
    """Scores hits by reversed retrieval rank, so reranking must invert the order."""

    def rerank(self, query: Query, hits: Sequence[Hit]) -> list[Hit]:
        scored = [Hit(h.doc_id, float(i)) for i, h in enumerate(hits)]
        return sorted(scored, key=lambda h: -h.score)


def test_rrf_matches_hand_computation() -> None:
    a = {"q": [Hit("x", 5.0), Hit("y", 4.0), Hit("z", 3.0)]}
    b = {"q": [Hit("z", 0.9), Hit("x", 0.5)]}
    fused = rrf([a, b], k_rrf=60)["q"]
    expected = {"x": 1 / 61 + 1 / 62, "y": 1 / 62, "z": 1 / 63 + 1 / 61}
    assert [h.doc_id for h in fused] == sorted(expected, key=lambda d: -expected[d])
    for hit in fused:
        assert hit.score == pytest.approx(expected[hit.doc_id])


def test_rrf_keeps_queries_missing_from_one_run() -> None:
    fused = rrf([{"q1": [Hit("x", 1.0)]}, {"q2": [Hit("y", 1.0)]}])
    assert set(fused) == {"q1", "q2"}


def test_hybrid_fuses_and_truncates() -> None:
    one = FixedRetriever({"q": [Hit("a", 3.0), Hit("b", 2.0), Hit("c", 1.0)]})
    two = FixedRetriever({"q": [Hit("c", 3.0), Hit("a", 2.0), Hit("d", 1.0)]})
    run = HybridRetriever([one, two], depth=3).retrieve([Query("q", "x")], k=2)
    assert [h.doc_id for h in run["q"]] == ["a", "c"]


def test_rerank_reorders_head_and_keeps_tail_below() -> None:
    hits = [Hit(d, 10.0 - i) for i, d in enumerate("abcde")]
    pipe = SearchPipeline(FixedRetriever({"q": hits}), ReverseRanker(), rerank_k=3)
    out = pipe.run([Query("q", "x")], k=5)["q"]
    assert [h.doc_id for h in out] == ["c", "b", "a", "d", "e"]
    assert all(x.score > y.score for x, y in zip(out, out[1:]))


def test_rerank_depth_then_cut_to_k() -> None:
    hits = [Hit(d, 10.0 - i) for i, d in enumerate("abcde")]
    pipe = SearchPipeline(FixedRetriever({"q": hits}), ReverseRanker(), rerank_k=5)
    assert [h.doc_id for h in pipe.run([Query("q", "x")], k=2)["q"]] == ["e", "d"]


def test_bm25_pipeline_search() -> None:
    pipe = SearchPipeline(BM25Retriever(BM25Index.build(DOCS)))
    hits = pipe.search("fish", k=10)
    assert {h.doc_id for h in hits} == {"a", "c"}
    assert hits[0].doc_id == "c"  # two occurrences of "fish" in a short doc


def test_dense_retriever_load_uses_the_manifest_encoder(tiny_bert: Path, tmp_path: Path) -> None:
    from ar2.encoders import BiEncoder

    encoder = BiEncoder.load(tiny_bert, pooling="cls", normalize=False, precision="fp32")
    vectors = encoder.encode_docs(DOCS)
    index = FaissIndex.build(vectors, [d.id for d in DOCS])
    index.save(tmp_path / "idx", {"encoder": encoder.describe()}, docs=DOCS)

    from ar2.retrievers import dense_from_folder

    loaded = dense_from_folder(tmp_path / "idx")
    assert loaded.encoder.config == encoder.config  # cls, no normalisation: not the defaults
    queries = [Query("q1", "fish eat"), Query("q2", "dogs")]
    expected = DenseRetriever(encoder, index).retrieve(queries, k=4)
    got = loaded.retrieve(queries, k=4)
    for qid in expected:
        assert [h.doc_id for h in got[qid]] == [h.doc_id for h in expected[qid]]
        np.testing.assert_allclose(
            [h.score for h in got[qid]], [h.score for h in expected[qid]], rtol=1e-5
        )
