"""The ONNX Runtime backend against torch on tiny random BERTs: the same query vectors (cosine
>= 0.9999 each), the same top 10 from an index, the same ranker logits for both heads; the
cache, the refusal of a graph that disagrees, int8, and the service's record of it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ar2.encoders import BiEncoder, CrossEncoder, onnx_runtime
from ar2.errors import Ar2Error
from ar2.types import Doc, Query

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

QUERIES = [
    "what do cats eat",
    "a",
    "dogs chase balls in the park and birds sing songs on the trees w1 w2 w3 w4 w5 w6",
    "cancer cell protein gene study",
    "heart risk",
]
WORDS = "cats eat fish dogs chase balls park birds sing songs cancer cell protein gene".split()


def _perturb(model: object, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():  # type: ignore[attr-defined]
            param.add_(0.05 * torch.randn(param.shape, generator=gen))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _docs(n: int = 40) -> list[Doc]:
    rng = np.random.default_rng(0)
    return [Doc(f"d{i}", " ".join(rng.choice(WORDS, size=3 + i % 9))) for i in range(n)]


@pytest.mark.parametrize("towers", ["shared", "separate", "dot"])
def test_query_vectors_match_torch(tiny_bert: Path, towers: str) -> None:
    encoder = BiEncoder.load(tiny_bert, precision="fp32", batch_size=2, query_max_length=12,
                             normalize=towers != "dot")  # fmt: skip
    if towers == "separate":  # the graph must hold the query tower, not the document one
        _perturb(encoder.untie().query_model, seed=3)
    expected = encoder.encode_queries(QUERIES)
    encoder.use_backend("onnx")
    got = encoder.encode_queries(QUERIES)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert _cosines(got, expected).min() >= 0.9999
    lengths = np.linalg.norm(expected, axis=1)  # a dot-product model's scores need them too
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), lengths, rtol=1e-4)
    assert (towers == "dot") == (np.abs(lengths - 1).max() > 0.01)
    assert encoder.backend()["backend"] == "onnx"
    assert encoder.backend()["check"]["min_cosine"] >= onnx_runtime.MIN_COSINE
    assert encoder.cuts["queries"].cut == 1  # the long query, counted as torch counts it
    if towers == "separate":  # documents stay on torch, through their own tower
        docs = encoder.encode_docs(QUERIES)
        assert _cosines(docs, expected).max() < 0.9999


def test_the_same_top_10_from_an_index(tiny_bert: Path) -> None:
    from ar2.index import FaissIndex

    encoder = BiEncoder.load(tiny_bert, precision="fp32")
    docs = _docs()
    index = FaissIndex.build(encoder.encode_docs(docs), [d.id for d in docs])
    before = index.search(encoder.encode_queries(QUERIES), 10)
    after = index.search(encoder.use_backend("onnx").encode_queries(QUERIES), 10)
    for want, got in zip(before, after):
        assert [h.doc_id for h in got] == [h.doc_id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-4)


@pytest.mark.parametrize("head", ["classifier", "cosine"])
def test_ranker_logits_match_torch(tiny_bert: Path, head: str) -> None:
    torch.manual_seed(0)
    ranker = CrossEncoder.load(
        tiny_bert, head=head, precision="fp32", batch_size=3, warn_new_head=False
    )
    _perturb(ranker.model, seed=5)  # a head that is not near zero
    docs = _docs(12)
    expected = ranker.score("what do cats eat", docs)
    got = CrossEncoder.use_backend(ranker, "onnx").score("what do cats eat", docs)
    spread = max(1.0, float(np.ptp(expected)))
    assert np.abs(got - expected).max() <= 1e-4 * spread
    assert np.array_equal(np.argsort(-got, kind="stable"), np.argsort(-expected, kind="stable"))
    assert ranker.backend()["role"] == "ranker"
    assert ranker.score("cats", []).shape == (0,)


def test_graphs_are_cached_by_weights(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = BiEncoder.load(tiny_bert, precision="fp32").use_backend("onnx")
    first = encoder.backend()["path"]
    assert Path(first).is_relative_to(Path(os.environ["AR2_CACHE"]))

    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_runtime, "_export", no_export)
    assert BiEncoder.load(tiny_bert).use_backend("onnx").backend()["path"] == first
    monkeypatch.undo()
    _perturb(encoder.query_model, seed=7)  # new weights: a new graph, never the stale one
    assert encoder.use_backend("onnx").backend()["path"] != first
    expected = encoder.use_backend("torch").encode_queries(QUERIES)
    assert _cosines(encoder.use_backend("onnx").encode_queries(QUERIES), expected).min() >= 0.9999


def test_a_graph_that_disagrees_is_refused_and_not_cached(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        onnx_runtime,
        "vector_agreement",
        lambda a, b: {"min_cosine": 0.5, "max_relative_error": 1.0},
    )
    encoder = BiEncoder.load(tiny_bert, precision="fp32")
    _perturb(encoder.query_model, seed=11)  # weights no other test exported
    with pytest.raises(Ar2Error, match="disagrees with torch.*Fix: use --backend torch"):
        encoder.use_backend("onnx")
    assert encoder.query_graph is None
    key = onnx_runtime._key(onnx_runtime.query_spec(encoder), "onnx")
    assert not (onnx_runtime.cache_dir() / key).exists()


def test_int8_is_recorded_with_its_agreement(tiny_bert: Path) -> None:
    encoder = BiEncoder.load(tiny_bert, precision="fp32")
    expected = encoder.encode_queries(QUERIES)
    got = encoder.use_backend("onnx-int8").encode_queries(QUERIES)
    record = encoder.backend()
    assert record["backend"] == "onnx-int8"
    measured = _cosines(got, expected).min()
    assert 0.9 < measured < 1.0  # quantized: close, not equal
    assert record["check"]["min_cosine"] < 1.0


def test_backend_names(monkeypatch: pytest.MonkeyPatch) -> None:
    assert onnx_runtime.resolve_backend("auto") == "onnx"
    assert onnx_runtime.resolve_backend("auto", device="cuda") == "torch"  # the GPU stays
    assert onnx_runtime.resolve_backend("onnx", device="cuda") == "onnx"  # asked for: a CPU copy
    monkeypatch.setattr(onnx_runtime.importlib.util, "find_spec", lambda name: None)
    assert onnx_runtime.resolve_backend("auto") == "torch"
    assert onnx_runtime.resolve_backend("torch") == "torch"
    with pytest.raises(Ar2Error, match=r"needs onnxruntime.*Fix: pip install 'ar2\[onnx\]'"):
        onnx_runtime.resolve_backend("onnx-int8")
    with pytest.raises(Ar2Error, match="backend 'tensorrt' is unknown. Fix: choose one of auto"):
        onnx_runtime.resolve_backend("tensorrt")


def test_the_service_records_and_answers_the_same(tiny_run: Path) -> None:
    from ar2.serve import SearchService

    queries = [Query(f"q{i}", q) for i, q in enumerate(QUERIES)]
    torch_service = SearchService.load(tiny_run, backend="torch")
    onnx_service = SearchService.load(tiny_run, backend="onnx")
    backends = onnx_service.info()["backends"]
    assert backends["query_encoder"]["backend"] == backends["ranker"]["backend"] == "onnx"
    assert torch_service.info()["backends"]["query_encoder"] == {"backend": "torch"}
    auto = SearchService.load(tiny_run, backend="auto").info()["backends"]
    assert auto["query_encoder"]["backend"] == "onnx"  # 5.9x faster for one query
    assert auto["ranker"] == {"backend": "torch"}  # 20 pairs: ONNX Runtime was slower
    for mode in ("dense", "hybrid"):
        for rerank_k in (0, 5):
            want = torch_service.search(queries, 5, mode, rerank_k)
            got = onnx_service.search(queries, 5, mode, rerank_k)
            for qid in want:
                assert [h.doc_id for h in got[qid]] == [h.doc_id for h in want[qid]]
                np.testing.assert_allclose(
                    [h.score for h in got[qid]], [h.score for h in want[qid]], atol=1e-3
                )


def test_a_failed_export_is_one_error_or_under_auto_a_warning(
    tiny_bert: Path,
    tiny_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from ar2.cli import main

    def broken(*args: object) -> None:
        raise RuntimeError("Exporting the operator 'aten::frobnicate' is not supported")

    monkeypatch.setattr(onnx_runtime, "_export", broken)
    encoder = BiEncoder.load(tiny_bert, precision="fp32")
    _perturb(encoder.query_model, seed=13)  # weights with no cached graph
    with pytest.raises(Ar2Error, match="export of the query model failed.*frobnicate.*Fix: use"):
        encoder.use_backend("onnx")
    with caplog.at_level("WARNING", logger="ar2"):
        assert encoder.use_backend("auto").query_graph is None
    assert "the model stays on torch" in caplog.text
    assert list(onnx_runtime.cache_dir().glob(".*.tmp")) == []  # nothing half-written
    monkeypatch.setenv("AR2_CACHE", str(tmp_path))  # the run's graph is not cached there
    index = str(tiny_run / "index")
    assert main(["search", index, "cats", "--backend", "onnx"]) == 2
    assert main(["search", index, "cats"]) == 0  # auto: on torch, with the warning
