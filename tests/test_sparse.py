"""The inference-free sparse encoder (``ar2.encoders.sparse``) and its FLOPS regulariser."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

from ar2.encoders import sparse  # noqa: E402
from ar2.errors import Ar2Error  # noqa: E402
from ar2.losses import flops, flops_weight  # noqa: E402

DOCS = ["cats eat fish", "dogs chase balls", "cats chase dogs", "fish swim"]


def _model(bert: Path) -> object:
    from transformers import AutoTokenizer

    idf = sparse.corpus_idf(AutoTokenizer.from_pretrained(str(bert)), DOCS, 32)
    return sparse.start(bert, idf, max_length=32)


def test_flops_matches_hand_computation() -> None:
    w = torch.tensor([[0.5, 0.0, 2.0, 1.0], [1.5, 0.0, 0.0, 3.0], [1.0, 0.0, 1.0, 2.0]])
    column_means = [(0.5 + 1.5 + 1.0) / 3, 0.0, (2.0 + 0.0 + 1.0) / 3, (1.0 + 3.0 + 2.0) / 3]
    assert flops(weights=w).item() == pytest.approx(sum(m * m for m in column_means))


def test_flops_gradient_grows_with_a_terms_use_across_the_batch() -> None:
    """d/dw_it = 2 mean_i(w_t) / B for w_it > 0: a term many documents use is pushed down
    hardest (a zero weight gets no push: |w|'s subgradient 0)."""
    w = torch.tensor([[1.0, 1.0], [1.0, 0.0]], requires_grad=True)
    flops(weights=w).backward()
    assert w.grad is not None
    assert w.grad.flatten().tolist() == pytest.approx([1.0, 0.5, 1.0, 0.0])


def test_flops_weight_ramps_quadratically_then_holds() -> None:
    assert [flops_weight(s, weight=2.0, warmup=10) for s in (5, 10, 20)] == [0.5, 2.0, 2.0]
    assert flops_weight(1, weight=2.0, warmup=0) == 2.0


def test_bm25_idf_matches_hand_computation() -> None:
    got = sparse.bm25_idf(np.array([0, 2, 4]), 4)
    want = [math.log(1 + 4.5 / 0.5), math.log(1 + 2.5 / 2.5), math.log(1 + 0.5 / 4.5)]
    assert got.tolist() == pytest.approx(want, rel=1e-6)


def test_corpus_idf_counts_each_document_once_and_zeroes_special_tokens(tiny_bert: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    idf = sparse.corpus_idf(tokenizer, ["cats cats cats fish", "cats"], 32)
    cats, fish = tokenizer.convert_tokens_to_ids(["cats", "fish"])
    assert idf[cats] == pytest.approx(math.log(1 + 0.5 / 2.5))  # df 2 of 2, repeats once
    assert idf[fish] == pytest.approx(math.log(1 + 1.5 / 1.5))
    assert all(idf[i] == 0 for i in tokenizer.all_special_ids)
    with pytest.raises(Ar2Error, match="no documents"):
        sparse.corpus_idf(tokenizer, [], 32)


def test_query_is_its_tokens_idf_and_the_score_a_sparse_dot_product(tiny_bert: Path) -> None:
    model = _model(tiny_bert)
    idf = sparse.query_idf(model)
    tokenizer = model.tokenizer
    q = sparse.query_weights(model, ["cats chase"])[0]  # (V,)
    ids = tokenizer.convert_tokens_to_ids(["cats", "chase"])
    assert sorted(q.nonzero().flatten().tolist()) == sorted(ids)  # no [CLS] / [SEP]
    assert q[ids].tolist() == pytest.approx(idf[ids].tolist())
    d = sparse.document_weights(model, DOCS)  # (4, V)
    assert d.requires_grad and (d >= 0).all()
    scores = model.similarity(q[None], d.detach())[0]
    assert scores.tolist() == pytest.approx((d.detach() * q).sum(-1).tolist(), rel=1e-5)


def test_a_new_head_starts_as_the_identity_over_the_tied_embeddings(tiny_bert: Path) -> None:
    """Without an MLM head in the folder, position i's logit for term t is
    LN(GELU(h_i)) . E_t + 0: the transform's dense layer is the identity."""
    model = _model(tiny_bert)
    mlm = model[0].sub_modules["document"][0].auto_model
    head = mlm.cls.predictions
    assert torch.equal(head.transform.dense.weight, torch.eye(32))
    assert head.decoder.weight.data_ptr() == mlm.bert.embeddings.word_embeddings.weight.data_ptr()
    batch = model.tokenizer(["cats eat fish"], return_tensors="pt")
    with torch.no_grad():
        hidden = mlm.bert(**batch).last_hidden_state  # (1, seq, 32)
        state = head.transform.LayerNorm(torch.nn.functional.gelu(hidden))
        logits = state @ mlm.bert.embeddings.word_embeddings.weight.T + head.bias
        want = torch.log1p(torch.relu(logits)).max(dim=1).values[0]  # SPLADE max pooling
        got = sparse.document_weights(model, ["cats eat fish"], precision="fp32")[0]
    assert torch.allclose(got, want, atol=1e-5)


def test_a_folder_with_a_trained_head_keeps_it(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import BertForMaskedLM

    mlm = BertForMaskedLM.from_pretrained(str(tiny_bert))
    torch.nn.init.normal_(mlm.cls.predictions.transform.dense.weight)
    mlm.save_pretrained(str(tmp_path / "mlm"))
    (tmp_path / "mlm" / "vocab.txt").write_text((tiny_bert / "vocab.txt").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_bert / name).exists():
            (tmp_path / "mlm" / name).write_text((tiny_bert / name).read_text())
    model = _model(tmp_path / "mlm")
    dense = model[0].sub_modules["document"][0].auto_model.cls.predictions.transform.dense
    assert torch.equal(dense.weight, mlm.cls.predictions.transform.dense.weight)


def test_saved_and_loaded_give_the_same_weights(tiny_bert: Path, tmp_path: Path) -> None:
    from sentence_transformers import SparseEncoder

    model = _model(tiny_bert)
    sparse.save(model, tmp_path / "sparse", source=str(tiny_bert), settings={"steps": 0})
    again = sparse.load(tmp_path / "sparse")
    want = sparse.encode_documents(model, DOCS).toarray()
    assert np.allclose(sparse.encode_documents(again, DOCS).toarray(), want, atol=1e-6)
    assert np.array_equal(sparse.query_idf(again), sparse.query_idf(model))
    plain = SparseEncoder(str(tmp_path / "sparse"))  # sentence-transformers loads it as it is
    q = plain.encode_query(["cats"], convert_to_tensor=True, convert_to_sparse_tensor=False)
    assert q[0].nonzero().flatten().tolist() == [model.tokenizer.convert_tokens_to_ids("cats")]
    manifest = (tmp_path / "sparse" / "manifest.json").read_text()
    assert '"vocabulary": 79' in manifest and '"source"' in manifest


def test_the_encoder_trains_and_encodes_on_the_device_of_every_other_stage(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started and loaded where ``pick_device`` says (the GPU where there is one): on an H200
    the encoder sat on the CPU, 9.5 s a step, while every other stage used the GPU. ``meta``
    stands in for a GPU here; an asked device wins."""
    sparse.save(_model(tiny_bert), tmp_path / "sparse", source=str(tiny_bert), settings={})
    monkeypatch.setattr(sparse, "pick_device", lambda: "meta")
    assert _model(tiny_bert).device.type == "meta"
    assert sparse.load(tmp_path / "sparse").device.type == "meta"
    assert sparse.load(tmp_path / "sparse", device="cpu").device.type == "cpu"
    on_meta = sparse.load(tmp_path / "sparse")  # calibration and training feed it these
    features = sparse._features(on_meta, DOCS, "document")
    assert {v.device.type for v in features.values() if hasattr(v, "device")} == {"meta"}
    assert features["input_ids"].device.type == "meta"


def test_refusals(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(Ar2Error, match="IDFs for a vocabulary"):
        sparse.start(tiny_bert, np.ones(3, dtype=np.float32))
    with pytest.raises(Ar2Error, match="not an inference-free sparse encoder"):
        sparse.load(tiny_bert)


def _saved_model(bert: Path, corpus: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    from ar2.data.beir import load_corpus

    texts = [d.full_text(" ") for d in load_corpus(corpus / "corpus.jsonl")]
    idf = sparse.corpus_idf(AutoTokenizer.from_pretrained(str(bert)), texts, 64)
    sparse.save(sparse.start(bert, idf, 64), out, source=str(bert), settings={})
    return out


def test_query_bags_are_the_models_query_route_without_the_model(tiny_bert: Path) -> None:
    model = _model(tiny_bert)
    bags = sparse.QueryBags(sparse.tokenizer_json(model), sparse.query_idf(model))
    texts = ["what do cats eat", "cats cats fish", "[CLS] zebra", ""]
    want = sparse.query_weights(model, texts).numpy()  # (4, V)
    assert np.allclose(bags(texts).toarray(), want)
    assert bags(texts).getrow(1).nnz == 2  # a repeated token counts once


def test_index_search_and_serve_with_no_model_per_query(
    toy_beir: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    """`ar2 index --kind sparse`, then the service answers in a process where torch,
    transformers and sentence-transformers cannot be imported: no model runs per query."""
    import json
    import subprocess
    import sys

    from ar2.data.beir import load_corpus
    from ar2.index import SparseIndex
    from ar2.retrievers import Retrievers

    model = _saved_model(tiny_bert, toy_beir, tmp_path / "model")
    out = tmp_path / "idx"
    cmd = [sys.executable, "-m", "ar2.cli", "index", str(toy_beir), "--kind", "sparse"]
    refused = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True)
    assert refused.returncode == 2 and "needs --model" in refused.stderr
    assert "Traceback" not in refused.stderr and not out.exists()
    built = subprocess.run(cmd + ["--model", str(model), "--out", str(out)],
                           capture_output=True, text=True)  # fmt: skip
    assert built.returncode == 0, built.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["vocabulary"]["size"] == 79 and manifest["query_weights"]["kind"] == "idf"
    assert manifest["encoder"]["kind"] == "sparse_encoder" and manifest["count"] == 8
    script = (
        "import sys, json\n"
        "for m in ('torch', 'transformers', 'sentence_transformers'): sys.modules[m] = None\n"
        "from ar2.serve import SearchService\nfrom ar2.types import Query\n"
        f"service = SearchService.load({str(out)!r})\n"
        "run = service.search([Query('q', 'what do cats eat')], 5)\n"
        "print(json.dumps([service.modes, [[h.doc_id, h.score] for h in run['q']]]))\n"
    )
    served = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert served.returncode == 0, served.stderr
    modes, hits = json.loads(served.stdout.splitlines()[-1])
    assert modes == ["sparse", "bm25"]
    index = SparseIndex.load(out)
    bags = sparse.QueryBags(index.query_tokenizer or "", index.query_weights)
    exact = index.exact(bags(["what do cats eat"]), 5)[0]
    assert [h[0] for h in hits] == [h.doc_id for h in exact]
    assert [h[1] for h in hits] == pytest.approx([h.score for h in exact], rel=2e-3)
    systems = Retrievers(load_corpus(toy_beir / "corpus.jsonl"))  # `ar2 eval`'s sparse:PATH
    again = systems.get(f"sparse:{model}").retrieve([_query("what do cats eat")], 5)["q"]
    assert [h.doc_id for h in again] == [h[0] for h in hits]
    with pytest.raises(Ar2Error, match="no sparse model is bundled"):
        systems.get("sparse")


def _query(text: str) -> object:
    from ar2.types import Query

    return Query("q", text)


def test_calibration_keeps_about_the_asked_terms_and_no_special_token(tiny_bert: Path) -> None:
    model = _model(tiny_bert)
    before = sparse.encode_documents(model, DOCS, precision="fp32")
    assert np.diff(before.indptr).min() > 40  # the identity head: nearly every term positive
    sparse.calibrate(model, DOCS, 5)
    after = sparse.encode_documents(model, DOCS, precision="fp32")
    counts = np.diff(after.indptr)
    assert np.median(counts) == pytest.approx(5, abs=1) and counts.max() < 20
    special = model.tokenizer.all_special_ids
    assert after[:, special].nnz == 0
    bias = model[0].sub_modules["document"][0].auto_model.cls.predictions.bias
    assert len(set(bias[[i for i in range(79) if i not in special]].tolist())) == 1
