"""The learned-sparse index (``ar2.index.sparse``): Seismic against the exact product."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("seismic")
sp = pytest.importorskip("scipy.sparse")

from ar2.errors import Ar2Error  # noqa: E402
from ar2.index import load_index  # noqa: E402
from ar2.index.sparse import SeismicSettings, SparseIndex  # noqa: E402
from ar2.types import Doc  # noqa: E402

V, N = 300, 2000


def _corpus(seed: int = 0) -> tuple[object, list[str], list[str]]:
    weights = sp.random(N, V, density=0.04, random_state=seed, format="csr", dtype=np.float32)
    return weights, [f"doc-{i}" for i in range(N)], [f"tok{i}" for i in range(V)]


def _queries(m: int = 40) -> object:
    return sp.random(m, V, density=0.03, random_state=7, format="csr", dtype=np.float32)


def test_approximate_search_finds_the_exact_top_10() -> None:
    weights, ids, vocab = _corpus()
    index = SparseIndex.build(weights, ids, vocab)
    queries = _queries()
    exact, found = index.exact(queries, 10), index.search(queries, 10)
    dense = (queries @ weights.T).toarray()  # the reference by hand: every score
    for row, hits in enumerate(exact):
        top = np.argsort(-dense[row])[:10]
        assert [h.doc_id for h in hits] == [ids[i] for i in top if dense[row, i] > 0]
    recall = np.mean([len({h.doc_id for h in a} & {h.doc_id for h in b}) / max(len(b), 1)
                      for a, b in zip(found, exact)])  # fmt: skip
    assert recall >= 0.95
    for row, hits in enumerate(found):  # the inner products of what it returns (half precision)
        for hit in hits:
            assert hit.score == pytest.approx(dense[row, ids.index(hit.doc_id)], rel=2e-3)


def test_a_higher_heap_factor_misses_more() -> None:
    weights, ids, vocab = _corpus()
    loose = SparseIndex.build(weights, ids, vocab, settings=SeismicSettings(heap_factor=0.3))
    strict = SparseIndex(loose.index, ids, loose.weights, vocab, None,
                         SeismicSettings(heap_factor=1.0))  # fmt: skip
    queries = _queries()
    exact = loose.exact(queries, 10)

    def recall(found: list) -> float:
        return float(np.mean([len({h.doc_id for h in a} & {h.doc_id for h in b}) / 10
                              for a, b in zip(found, exact)]))  # fmt: skip

    assert recall(strict.search(queries, 10)) < recall(loose.search(queries, 10))


def test_saved_and_loaded_answer_alike_and_record_vocabulary_and_weights(tmp_path: Path) -> None:
    weights, ids, vocab = _corpus()
    idf = np.linspace(0.1, 5.0, V).astype(np.float32)
    index = SparseIndex.build(weights, ids, vocab, query_weights=idf)
    docs = [Doc(i, f"text {i}") for i in ids]
    index.save(tmp_path / "idx", {"encoder": {"kind": "sparse_encoder"}}, docs=docs)
    again = load_index(tmp_path / "idx")
    assert isinstance(again, SparseIndex)
    queries = _queries()
    assert again.search(queries, 10) == index.search(queries, 10)
    assert again.vocabulary == vocab and np.array_equal(again.query_weights, idf)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["kind"] == "sparse" and manifest["count"] == N
    assert manifest["vocabulary"]["size"] == V and manifest["query_weights"]["kind"] == "idf"
    assert manifest["document_weights"]["nonzero"] == weights.nnz
    assert manifest["encoder"] == {"kind": "sparse_encoder"}
    assert (tmp_path / "idx" / "corpus.jsonl").read_text().count("\n") == N


def test_tokens_with_any_characters_work() -> None:
    vocab = ["[CLS]", "##s", "naïve", "a b", ""]
    weights = sp.csr_matrix(np.array([[0, 1.0, 0, 0, 0], [0, 0, 2.0, 1.0, 0]], dtype=np.float32))
    index = SparseIndex.build(weights, ["x", "y"], vocab)
    query = sp.csr_matrix(np.array([[0, 0, 1.0, 0, 0]], dtype=np.float32))
    assert [(h.doc_id, h.score) for h in index.search(query, 5)[0]] == [("y", 2.0)]


def test_refusals(tmp_path: Path) -> None:
    weights, ids, vocab = _corpus()
    with pytest.raises(Ar2Error, match="rows of weights but"):
        SparseIndex.build(weights, ids[:-1], vocab)
    with pytest.raises(Ar2Error, match="query weights but"):
        SparseIndex.build(weights, ids, vocab, query_weights=np.ones(3, dtype=np.float32))
    with pytest.raises(Ar2Error, match="no document .* has a non-zero weight"):
        SparseIndex.build(sp.csr_matrix((2, V), dtype=np.float32), ["a", "b"], vocab)
    index = SparseIndex.build(weights, ids, vocab)
    with pytest.raises(Ar2Error, match="the index's vocabulary has 300"):
        index.search(sp.csr_matrix((1, 5), dtype=np.float32), 10)
    index.save(tmp_path / "idx")
    (tmp_path / "idx" / "weights.npz").write_bytes(b"not a zip")
    with pytest.raises(Ar2Error, match="missing or corrupt sparse index"):
        SparseIndex.load(tmp_path / "idx")


def test_seismics_progress_goes_to_stderr_and_stdout_stays_for_results(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import sys

    weights, ids, vocab = _corpus()
    capfd.readouterr()
    print("before")
    index = SparseIndex.build(weights, ids, vocab)
    index.save(tmp_path / "ix")
    sys.stdout.flush()
    print("after")
    out, err = capfd.readouterr()
    assert out == "before\nafter\n"  # nothing of Seismic's, and stdout restored
    assert "Building" in err and "Saving" in err  # its progress is still seen
