"""The dense index in a Milvus collection (milvus-lite, a local store): the same hits as FAISS
flat, the folder round trip, updates, the service over it, and every refusal."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")
pytest.importorskip("faiss")

from ar2.config import IndexConfig  # noqa: E402
from ar2.errors import Ar2Error, StoreUnavailable  # noqa: E402
from ar2.index import FaissIndex, load_dense  # noqa: E402
from ar2.index.milvus import PROPERTY, MilvusIndex, MilvusTarget, connect  # noqa: E402
from ar2.types import Doc, Query  # noqa: E402
from conftest import TOY_DOCS  # noqa: E402

SCIFACT = Path(__file__).resolve().parents[1] / "data" / "scifact"


def _bag_of_words(texts: list[str], vocab: dict[str, np.ndarray]) -> np.ndarray:
    """Unit vectors: the sum of each word's fixed random vector (a fast stand-in encoder)."""
    rng = np.random.default_rng(0)
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            if word not in vocab:
                vocab[word] = rng.standard_normal(64).astype(np.float32)
            out[i] += vocab[word]
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_the_same_top_10_as_faiss_flat_on_scifact(tmp_path: Path) -> None:
    from ar2.data.beir import load_corpus, load_qrels, load_queries

    corpus = load_corpus(SCIFACT / "corpus.jsonl")
    asked = [q for q in load_queries(SCIFACT / "queries.jsonl")
             if q.id in load_qrels(SCIFACT / "qrels" / "test.tsv")]  # fmt: skip
    vocab: dict[str, np.ndarray] = {}
    docs = _bag_of_words([d.full_text() for d in corpus], vocab)  # (5183, 64)
    queries = _bag_of_words([q.text for q in asked], vocab)  # (300, 64)
    ids = [d.id for d in corpus]
    faiss = FaissIndex.build(docs, ids).search(queries, 10)
    index = MilvusIndex.build(docs, ids, str(tmp_path / "s.db"), "scifact", docs=corpus)
    try:
        milvus = index.search(queries, 10)
        assert len(index) == len(corpus) == 5183
    finally:
        index.close()
    for want, got in zip(faiss, milvus, strict=True):
        scores = np.array([h.score for h in want])
        np.testing.assert_allclose([h.score for h in got], scores, atol=1e-5)
        for rank, (a, b) in enumerate(zip(want, got)):
            if a.doc_id != b.doc_id:  # only where two scores tie may the order differ
                tied = np.abs(scores - scores[rank]) < 1e-5
                assert tied.sum() > 1 and b.doc_id in {want[j].doc_id for j in np.flatnonzero(tied)}


def _toy_index(
    tmp_path: Path, bert: Path, out: Path, collection: str = "toy", **kw: object
) -> Path:
    from ar2.encoders import BiEncoder
    from ar2.index.dense import index_corpus

    encoder = BiEncoder.load(bert, precision="fp32")
    docs = [Doc(d["_id"], d["text"], d["title"]) for d in TOY_DOCS]
    index_corpus(encoder, lambda: iter(docs), [d.id for d in docs], out, IndexConfig(),
                 {"data": "toy"}, store_docs=True, milvus=MilvusTarget(None, collection),
                 **kw)  # type: ignore[arg-type]  # fmt: skip
    return out


def test_an_index_folder_round_trip_with_its_store_inside(tmp_path: Path, tiny_bert: Path) -> None:
    from ar2.encoders import BiEncoder
    from ar2.retrievers import dense_from_folder, documents

    out = _toy_index(tmp_path, tiny_bert, tmp_path / "idx")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["store"] == {"kind": "milvus", "collection": "toy", "uri": "milvus.db"}
    assert manifest["milvus_index"] == {"type": "FLAT", "params": {}} and manifest["count"] == 8
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "milvus.db"]
    moved = Path(shutil.move(out, tmp_path / "moved"))  # the store moves with its folder
    retriever = dense_from_folder(moved)
    encoder = BiEncoder.load(tiny_bert, precision="fp32")
    docs = [Doc(d["_id"], d["text"], d["title"]) for d in TOY_DOCS]
    exact = FaissIndex.build(encoder.encode_docs(docs), [d.id for d in docs])
    queries = encoder.encode_queries(["what do cats eat", "heart risk"])
    want, got = exact.search(queries, 8), retriever.index.search(queries, 8)
    assert [[h.doc_id for h in r] for r in got] == [[h.doc_id for h in r] for r in want]
    np.testing.assert_allclose([[h.score for h in r] for r in got],
                               [[h.score for h in r] for r in want], atol=1e-5)  # fmt: skip
    client = retriever.index.client
    assert json.loads(client.describe_collection("toy")["properties"][PROPERTY]) == json.loads(
        (moved / "manifest.json").read_text()
    )
    stored = documents(moved, retriever)
    assert stored["d1"] == Doc("d1", "cats eat fish and cats sing", "Cats")
    assert len(stored) == 8 and sorted(stored) == sorted(d.id for d in docs)
    assert stored.fetch(["d2", "nope"]) == {"d2": docs[1]}  # type: ignore[attr-defined]
    retriever.index.close()


def test_added_and_deleted_documents_are_seen_by_the_next_search(tmp_path: Path) -> None:
    vectors = np.eye(4, dtype=np.float32)
    index = MilvusIndex.build(vectors[:3], ["a", "b", "c"], str(tmp_path / "s.db"), "upd")
    try:
        index.add(vectors[3:] * 2, ["d"], [Doc("d", "new text", "New")])
        assert index.search(vectors[3:], 1)[0][0].doc_id == "d" and len(index) == 4
        assert index.docs(["d"]) == {"d": Doc("d", "new text", "New")}
        index.add(vectors[:1] * 3, ["d"])  # an upsert replaces the row
        assert [h.doc_id for h in index.search(vectors[:1], 2)[0]] == ["d", "a"]
        assert index.delete(["d", "missing"]) == 1
        assert [h.doc_id for h in index.search(vectors[:1], 2)[0]] == ["a", "b"]
        assert len(index) == 3
        with pytest.raises(Ar2Error, match="dimension 4. Fix: encode with the model"):
            index.search(np.ones((1, 3), dtype=np.float32), 1)
    finally:
        index.close()


def test_a_rebuild_switches_the_alias_and_never_touches_what_ar2_did_not_make(
    tmp_path: Path,
) -> None:
    pymilvus = pytest.importorskip("pymilvus")
    uri, v = str(tmp_path / "s.db"), np.eye(2, dtype=np.float32)
    first = MilvusIndex.build(v, ["a", "b"], uri, "c1")
    before = first.client.describe_alias("c1")["collection_name"]
    first.close()
    again = MilvusIndex.build(v[::-1], ["x", "y"], uri, "c1")  # ar2's own: replaced
    assert again.search(v[:1], 1)[0][0].doc_id == "y"
    assert before not in again.client.list_collections()  # the old one went after the switch
    assert len([c for c in again.client.list_collections() if c.startswith("c1__ar2_")]) == 1
    schema = again.client.create_schema(auto_id=False)
    schema.add_field("pk", pymilvus.DataType.INT64, is_primary=True)
    schema.add_field("v", pymilvus.DataType.FLOAT_VECTOR, dim=2)
    again.client.create_collection("theirs", schema=schema)
    again.close()
    with pytest.raises(Ar2Error, match="ar2 did not build it: ar2 leaves it"):
        MilvusIndex.build(v, ["a", "b"], uri, "theirs")
    client = connect(uri)
    assert client.has_collection("theirs")
    client.close()


def test_refusals_name_the_fix(tmp_path: Path, tiny_bert: Path) -> None:
    from ar2.index.milvus import check_collection_name, check_uri
    from ar2.retrievers import dense_from_folder
    from conftest import build_tiny_bert

    with pytest.raises(Ar2Error, match="holds credentials. Fix: .*MILVUS_TOKEN"):
        check_uri("https://user:pw@milvus.example:19530")
    with pytest.raises(Ar2Error, match="collection name '1x'"):
        check_collection_name("1x")
    with pytest.raises(StoreUnavailable, match="cannot reach Milvus at http://127.0.0.1:1 .*Fix:"):
        connect("http://127.0.0.1:1", timeout=5)
    with pytest.raises(Ar2Error, match="--factory is a FAISS factory string"):
        MilvusIndex.build(np.eye(2, dtype=np.float32), ["a", "b"], str(tmp_path / "s.db"), "f",
                          IndexConfig(factory="Flat"))  # fmt: skip
    one = _toy_index(tmp_path, tiny_bert, tmp_path / "one", collection="shared")
    wider = build_tiny_bert(tmp_path / "wider")
    _wider_encoder_dim(wider)
    with pytest.raises(Ar2Error, match="32 dimensions, but the encoder .* makes 48. Fix:"):
        dense_from_folder(one, wider)
    store = json.loads((one / "manifest.json").read_text())
    index = load_dense(one)
    changed = dict(index.manifest, encoder={"source": "elsewhere"})
    index.client.alter_collection_properties("shared", properties={PROPERTY: json.dumps(changed)})
    index.close()
    with pytest.raises(Ar2Error, match="was built with another encoder .*Fix: rebuild it"):
        load_dense(one)
    assert store["store"]["collection"] == "shared"


def _wider_encoder_dim(path: Path) -> None:
    """Make the tiny BERT at ``path`` 48 wide (another dimension than the index's 32)."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(str(path))
    config.hidden_size, config.intermediate_size = 48, 96
    torch.manual_seed(1)
    BertModel(config).save_pretrained(str(path))


def test_the_cli_builds_searches_and_refuses(tmp_path: Path, tiny_bert: Path, toy_beir: Path,
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from ar2.cli import main

    out = tmp_path / "cli-idx"
    base = ["index", str(toy_beir), "--kind", "dense", "--model", str(tiny_bert),
            "--precision", "fp32"]  # fmt: skip
    store = str(tmp_path / "elsewhere.db")
    assert main([*base, "--store", "milvus", "--uri", store, "--out", str(out)]) == 0
    assert "Milvus collection cli_idx" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["store"]["uri"] == store and manifest["data"] == str(toy_beir.resolve())
    assert main(["search", str(out), "what do cats eat", "-k", "8"]) == 0
    printed = capsys.readouterr().out
    assert "d1" in printed and "Cats" in printed  # the title, read from the store
    inside = str(tmp_path / "refused" / "x.db")
    for extra, message in (
        (["--store", "milvus", "--uri", inside], "is inside --out"),
        (["--uri", store], "--uri and --collection name a Milvus store. Fix: add --store milvus"),
        (["--store", "milvus", "--preset", "flat", "--quantize", "int8"], "--quantize is not"),
        (["--store", "milvus", "--collection", "bad-name"], "collection name 'bad-name'"),
        (["--store", "milvus", "--preset", "ivfpq"], "milvus-lite store builds no IVF_PQ"),
    ):
        assert main([*base, *extra, "--out", str(tmp_path / "refused")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    huge = toy_beir / "corpus.jsonl"
    with huge.open("a") as f:
        f.write(json.dumps({"_id": "big", "title": "", "text": "x" * 70_000}) + "\n")
    assert main([*base, "--store", "milvus", "--out", str(tmp_path / "big")]) == 2
    err = capsys.readouterr().err
    assert f"{huge}:9: document 'big': its text is 70,000 bytes" in err and "Fix:" in err
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # not installed
    assert main([*base, "--store", "milvus", "--out", str(tmp_path / "none")]) == 2
    assert "pip install 'ar2[milvus]'" in capsys.readouterr().err


def test_the_service_over_milvus_searches_updates_and_answers_503(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from ar2.serve import SearchService, create_app

    out = _toy_index(tmp_path, tiny_bert, tmp_path / "svc")
    plain = SearchService.load(out)
    assert plain.modes == ("dense", "bm25", "hybrid") and not plain.updatable
    client = TestClient(create_app(plain), base_url="http://localhost")
    for mode in plain.modes:
        hits = client.post("/search", json={"query": "what do cats eat", "mode": mode}).json()
        top = {h["id"]: h for h in hits["hits"]}
        assert top["d1"]["title"] == "Cats" and "cats" in top["d1"]["snippet"]
    assert client.get("/health").json()["documents"] == 8
    assert client.post("/documents", json={"documents": []}).status_code == 404  # off
    plain.close()
    from ar2.index.milvus import _release_local

    _release_local(plain._pipelines["dense"].retriever.index.uri)  # the store's server stops
    down = client.post("/search", json={"query": "cats", "mode": "dense"})
    assert down.status_code == 503 and down.headers["retry-after"] == "5"
    assert "did not answer" in down.json()["detail"]

    def no_bm25(*args: object) -> None:
        raise AssertionError("a service taking updates builds no BM25 index")

    monkeypatch.setattr("ar2.retrievers.bm25", no_bm25)
    service = SearchService.load(out, updates=True)
    assert service.modes == ("dense",) and service.updatable
    client = TestClient(create_app(service), base_url="http://localhost")
    new = {"id": "d9", "title": "Whales", "text": "whales sing songs in the sea"}
    done = client.post("/documents", json={"documents": [new]})
    assert done.status_code == 200 and done.json()["upserted"] == 1
    encoder = service._pipelines["dense"].retriever.encoder
    [vector] = encoder.encode_docs([Doc("d9", new["text"], new["title"])])
    [[best]] = service._pipelines["dense"].retriever.index.search(vector[None], 1)
    assert best.doc_id == "d9"  # the next search sees it
    body = {"query": "whales sing songs in the sea", "k": 9}
    hits = client.post("/search", json=body).json()["hits"]
    assert {h["id"]: h["title"] for h in hits}["d9"] == "Whales"
    assert client.delete("/documents/d9").json() == {"deleted": "d9"}
    assert "d9" not in {h["id"] for h in client.post("/search", json=body).json()["hits"]}
    assert client.delete("/documents/d9").status_code == 404
    bad = client.post("/documents", json={"documents": [{"id": "x\ny", "text": "t"}]})
    assert bad.status_code == 422
    assert client.get("/health").json()["documents"] == 8
    service.close()
    service._pipelines["dense"].retriever.index.close()
    with pytest.raises(Ar2Error, match="updates need a dense index in Milvus"):
        SearchService.load(_faiss_toy(tmp_path, tiny_bert), updates=True)


def _faiss_toy(tmp_path: Path, bert: Path) -> Path:
    from ar2.encoders import BiEncoder

    encoder = BiEncoder.load(bert, precision="fp32")
    docs = [Doc(d["_id"], d["text"], d["title"]) for d in TOY_DOCS]
    FaissIndex.build(encoder.encode_docs(docs), [d.id for d in docs]).save(
        tmp_path / "faiss", {"encoder": encoder.describe()}, docs
    )
    return tmp_path / "faiss"


def test_export_copies_a_runs_index_and_refuses_codes_alone(
    tmp_path: Path, tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ar2.cli import main
    from ar2.serve import SearchService

    out = tmp_path / "exported"
    assert main(["export", str(tiny_run), "--out", str(out), "--preset", "hnsw"]) == 0
    assert "exported 8 documents" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    run_manifest = json.loads((tiny_run / "index" / "manifest.json").read_text())
    assert manifest["encoder"] == run_manifest["encoder"]
    assert manifest["exported_from"]["manifest"] == run_manifest
    assert manifest["milvus_index"]["type"] == "HNSW"
    ours = SearchService.load(out, reranker=tiny_run / "ranker", rerank_k=5)
    theirs = SearchService.load(tiny_run)  # its FAISS index, its ranker, rerank_k 5
    for query in ("what do cats eat", "heart risk", "cancer gene protein"):
        for rerank_k in (0, 5):  # the ranker reads its texts from the store
            a, b = (s.search([Query("q", query)], 8, "dense", rerank_k)["q"]
                    for s in (ours, theirs))  # fmt: skip
            assert [h.doc_id for h in a] == [h.doc_id for h in b]
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    ours._pipelines["dense"].retriever.index.close()
    codes = tmp_path / "codes"
    index = FaissIndex.load(tiny_run / "index")
    rows = index.index.reconstruct_n(0, 8)
    FaissIndex.build(np.tile(rows, (40, 1)), [f"{i}" for i in range(320)],
                     IndexConfig(factory="PQ8", refine=0)).save(codes, dict(
                         encoder=run_manifest["encoder"]))  # fmt: skip
    assert main(["export", str(codes), "--out", str(tmp_path / "refused")]) == 2
    assert "keeps codes, not the vectors. Fix:" in capsys.readouterr().err


def test_an_interrupted_build_leaves_the_served_collection_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ar2.index import milvus

    uri, v = str(tmp_path / "s.db"), np.eye(3, dtype=np.float32)
    milvus.MilvusIndex.build(v, ["a", "b", "c"], uri, "live").close()
    real = milvus._fill

    def killed(client: object, name: str, chunks: object, docs: object, n: int = 0) -> int:
        real(client, name, iter([(v[:1], ["z"])]), iter(()))  # a part of the new rows
        raise KeyboardInterrupt

    monkeypatch.setattr(milvus, "_fill", killed)
    with pytest.raises(KeyboardInterrupt):
        milvus.MilvusIndex.build(v[::-1], ["x", "y", "z"], uri, "live")
    monkeypatch.setattr(milvus, "_fill", real)
    client = connect(uri)
    left = [c for c in client.list_collections() if c.startswith("live__ar2_")]
    assert len(left) == 2  # the served one and the half-built one
    client.load_collection("live")
    found = client.search("live", data=[v[0]], limit=3, output_fields=["id"])
    assert sorted(h["id"] for h in found[0]) == ["a", "b", "c"]  # searches see the old build
    client.close()
    milvus._release_local(uri)
    again = milvus.MilvusIndex.build(v, ["p", "q", "r"], uri, "live")
    assert [c for c in again.client.list_collections() if c.startswith("live__ar2_")] == [
        again.client.describe_alias("live")["collection_name"]
    ]  # the half-built one went, and the replaced one
    again.close()
