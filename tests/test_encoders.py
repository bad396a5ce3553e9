"""BiEncoder and CrossEncoder on tiny random BERTs, checked against transformers and
sentence-transformers computed independently in the test. Everything runs offline in fp32
(except the one bf16 check), since ``precision="auto"`` picks bf16 on CPUs that have it."""

from __future__ import annotations

import json
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest

from ar2.encoders import BiEncoder, CrossEncoder
from ar2.errors import Ar2Error
from ar2.types import Doc, Query

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Texts of different token lengths (1 to 11 words) in a shuffled order, so length-sorted
# batching really reorders them and pads short ones next to long ones.
TEXTS = [
    "cats eat fish",
    "dogs chase balls in the park and birds sing songs on",
    "a",
    "cancer cell protein gene study",
    "what do cats eat",
    "brain and heart blood study in mice w1 w2 w3 w4",
    "drug trial",
]
QUERIES = ["what do cats eat", "dogs chase balls", "heart risk", "cancer gene protein"]
PAIRS = [
    ("what do cats eat", "cats eat fish and cats sing"),
    ("dogs chase balls", "dogs chase balls in the park"),
    ("heart risk", "brain and heart blood study in mice"),
    ("cancer", "birds sing songs on the trees"),
    ("drug trial effect on patients", "drug trial patients risk effect"),
]


def _reference(model_dir: Path, texts: list[str], pooling: str, normalize: bool) -> np.ndarray:
    """Pooled vectors computed directly with transformers, in fp32, with padding."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state  # (n, seq, dim)
    if pooling == "mean":
        mask = inputs["attention_mask"].unsqueeze(-1).float()  # (n, seq, 1)
        vectors = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    else:
        vectors = hidden[:, 0]
    vectors = vectors.numpy()
    if normalize:
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def _assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float noise: the same weights on the same input (oneDNN/thread
    scheduling can change the last bit, ~2e-9 seen, so not bitwise)."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


def _perturb(model: object, seed: int = 1, scale: float = 0.05) -> None:
    """Add seeded noise to every weight of ``model`` (so a tower differs from its copy)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():  # type: ignore[attr-defined]
            param.add_(scale * torch.randn(param.shape, generator=gen))


# ---------------------------------------------------------------- BiEncoder: vectors


@pytest.mark.parametrize(
    ("pooling", "normalize"), [("mean", True), ("mean", False), ("cls", True), ("cls", False)]
)
def test_bi_encoder_matches_hand_pooling(tiny_bert: Path, pooling: str, normalize: bool) -> None:
    enc = BiEncoder.load(tiny_bert, pooling=pooling, normalize=normalize, precision="fp32")
    got = enc.encode_docs(TEXTS)
    assert got.dtype == np.float32
    assert got.shape == (len(TEXTS), 32)
    assert enc.dim == 32
    np.testing.assert_allclose(got, _reference(tiny_bert, TEXTS, pooling, normalize), atol=1e-5)
    norms = np.linalg.norm(got, axis=1)
    if normalize:
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    else:
        # a random BERT's raw states are far from unit length: normalisation really is off
        assert np.all(np.abs(norms - 1.0) > 0.1)
    # queries go through the same (shared) tower: same text, same vector
    np.testing.assert_allclose(enc.encode_queries(TEXTS[:3]), got[:3], atol=1e-5)


def test_length_sorted_batching_keeps_results_and_order(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = BiEncoder.load(tiny_bert, precision="fp32")
    default = enc.encode_docs(TEXTS)
    singles = BiEncoder.load(tiny_bert, precision="fp32", batch_size=1).encode_docs(TEXTS)
    threes = BiEncoder.load(tiny_bert, precision="fp32", batch_size=3).encode_docs(TEXTS)
    np.testing.assert_allclose(singles, default, atol=1e-5)
    np.testing.assert_allclose(threes, default, atol=1e-5)
    # output row i belongs to input i: each text encoded alone gives the same row
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(enc.encode_docs([text])[0], default[i], atol=1e-5)
    # reversing the input reverses the output
    np.testing.assert_allclose(enc.encode_docs(TEXTS[::-1]), default[::-1], atol=1e-5)
    # tokenising in chunks (bounded memory on large corpora) changes nothing either
    monkeypatch.setattr("ar2.encoders.bi_encoder._CHUNK", 2)
    np.testing.assert_allclose(enc.encode_docs(iter(TEXTS)), default, atol=1e-5)


def test_empty_input_gives_empty_float32_array(tiny_bert: Path) -> None:
    enc = BiEncoder.load(tiny_bert, precision="fp32")
    out = enc.encode_docs([])
    assert out.shape == (0, 32)
    assert out.dtype == np.float32


def test_bf16_close_to_fp32(tiny_bert: Path) -> None:
    fp32 = BiEncoder.load(tiny_bert, precision="fp32").encode_docs(TEXTS)
    bf16 = BiEncoder.load(tiny_bert, precision="bf16").encode_docs(TEXTS)
    assert bf16.dtype == np.float32  # bf16 compute, fp32 output
    cosine = np.sum(fp32 * bf16, axis=1)  # both normalised by default
    assert np.all(cosine > 0.99), cosine
    assert not np.array_equal(fp32, bf16)  # bf16 really was used


def test_query_and_doc_inputs(tiny_bert: Path) -> None:
    enc = BiEncoder.load(tiny_bert, precision="fp32")
    # Query objects are encoded by their text
    np.testing.assert_allclose(
        enc.encode_queries([Query("q1", "cats eat fish")]),
        enc.encode_queries(["cats eat fish"]),
        atol=1e-6,
    )
    # a Doc is encoded as "title + title_sep + text"
    np.testing.assert_allclose(
        enc.encode_docs([Doc("d1", "eat fish", title="cats")]),
        enc.encode_docs(["cats eat fish"]),
        atol=1e-6,
    )


def test_query_max_length_truncates(tiny_bert: Path) -> None:
    # 4 tokens = [CLS] cats eat [SEP]: the rest of the query is cut off
    enc = BiEncoder.load(tiny_bert, precision="fp32", query_max_length=4)
    np.testing.assert_allclose(
        enc.encode_queries(["cats eat fish dogs chase"]),
        enc.encode_queries(["cats eat"]),
        atol=1e-6,
    )
    assert not np.allclose(
        enc.encode_docs(["cats eat fish dogs chase"]), enc.encode_docs(["cats eat"]), atol=1e-3
    )


def test_training_doc_cut_off(tiny_bert: Path) -> None:
    # embed_docs(max_length=4) sees [CLS] cats eat [SEP], like encoding "cats eat"
    enc = BiEncoder.load(tiny_bert, precision="fp32")
    long_doc = "cats eat fish dogs chase"
    cut = enc.embed_docs([long_doc], max_length=4).detach().numpy()
    np.testing.assert_allclose(cut, enc.encode_docs(["cats eat"]), atol=1e-6)
    assert not np.allclose(enc.embed_docs([long_doc]).detach().numpy(), cut, atol=1e-3)


def test_prefixes_are_prepended(tiny_bert: Path) -> None:
    plain = BiEncoder.load(tiny_bert, precision="fp32")
    prefixed = BiEncoder.load(
        tiny_bert, precision="fp32", query_prefix="query: ", doc_prefix="passage: "
    )
    np.testing.assert_allclose(
        prefixed.encode_queries(QUERIES),
        plain.encode_queries([f"query: {q}" for q in QUERIES]),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        prefixed.encode_docs(TEXTS),
        plain.encode_docs([f"passage: {t}" for t in TEXTS]),
        atol=1e-6,
    )
    assert not np.allclose(prefixed.encode_queries(QUERIES), plain.encode_queries(QUERIES))


# ---------------------------------------------------------------- BiEncoder: save / load


@pytest.mark.parametrize(("pooling", "normalize"), [("mean", True), ("cls", False)])
def test_save_load_shared_towers(
    tiny_bert: Path, tmp_path: Path, pooling: str, normalize: bool
) -> None:
    enc = BiEncoder.load(tiny_bert, pooling=pooling, normalize=normalize, precision="fp32")
    enc.save(tmp_path / "enc")
    loaded = BiEncoder.load(tmp_path / "enc")
    assert loaded.config == enc.config
    assert loaded.shared
    assert not (tmp_path / "enc" / "query_encoder").exists()
    _assert_same(loaded.encode_docs(TEXTS), enc.encode_docs(TEXTS))
    _assert_same(loaded.encode_queries(QUERIES), enc.encode_queries(QUERIES))
    manifest = json.loads((tmp_path / "enc" / "manifest.json").read_text())
    assert manifest["kind"] == "bi_encoder"
    assert manifest["towers"] == "shared"
    assert manifest["dim"] == 32
    assert manifest["similarity"] == ("cosine" if normalize else "dot")
    assert manifest["config"]["pooling"] == pooling


def test_save_load_separate_towers(tiny_bert: Path, tmp_path: Path) -> None:
    enc = BiEncoder.load(tiny_bert, precision="fp32").untie()
    assert not enc.shared
    _perturb(enc.query_model)
    queries, docs = enc.encode_queries(TEXTS), enc.encode_docs(TEXTS)
    # the towers now differ: the same text gives different query and doc vectors
    assert not np.allclose(queries, docs, atol=1e-3)
    # and the doc tower is still the original model
    np.testing.assert_allclose(docs, _reference(tiny_bert, TEXTS, "mean", True), atol=1e-5)

    enc.save(tmp_path / "enc")
    assert (tmp_path / "enc" / "query_encoder" / "config.json").is_file()
    manifest = json.loads((tmp_path / "enc" / "manifest.json").read_text())
    assert manifest["towers"] == "separate"

    loaded = BiEncoder.load(tmp_path / "enc")
    assert not loaded.shared
    _assert_same(loaded.encode_queries(TEXTS), queries)
    _assert_same(loaded.encode_docs(TEXTS), docs)
    # the sub-folder alone is the query tower
    np.testing.assert_allclose(
        BiEncoder.load(tmp_path / "enc" / "query_encoder", precision="fp32").encode_docs(TEXTS),
        queries,
        atol=1e-5,
    )


def test_untie_is_idempotent(tiny_bert: Path) -> None:
    enc = BiEncoder.load(tiny_bert, precision="fp32").untie()
    tower = enc.query_model
    assert enc.untie().query_model is tower  # a second untie keeps the (trained) query tower


def test_st_folder_config_is_read_without_manifest(tiny_bert: Path, tmp_path: Path) -> None:
    enc = BiEncoder.load(
        tiny_bert, pooling="cls", normalize=False, precision="fp32", query_prefix="query: "
    )
    enc.save(tmp_path / "enc")
    (tmp_path / "enc" / "manifest.json").unlink()  # only the sentence-transformers files remain
    loaded = BiEncoder.load(tmp_path / "enc", precision="fp32")
    assert loaded.config.pooling == "cls"
    assert loaded.config.normalize is False
    assert loaded.config.query_prefix == "query: "
    assert loaded.config.doc_max_length == enc.config.doc_max_length
    np.testing.assert_allclose(loaded.encode_docs(TEXTS), enc.encode_docs(TEXTS), atol=1e-6)
    np.testing.assert_allclose(
        loaded.encode_queries(QUERIES), enc.encode_queries(QUERIES), atol=1e-6
    )
    # explicit overrides still win over the folder's settings
    assert BiEncoder.load(tmp_path / "enc", pooling="mean").config.pooling == "mean"


# ---------------------------------------------------------------- BiEncoder: sentence-transformers


@pytest.mark.parametrize(("pooling", "normalize"), [("mean", True), ("cls", False)])
def test_sentence_transformers_loads_saved_folder(
    tiny_bert: Path, tmp_path: Path, pooling: str, normalize: bool
) -> None:
    st = pytest.importorskip("sentence_transformers")
    enc = BiEncoder.load(
        tiny_bert, pooling=pooling, normalize=normalize, precision="fp32", query_prefix="query: "
    )
    enc.save(tmp_path / "enc")
    model = st.SentenceTransformer(str(tmp_path / "enc"), device="cpu")
    np.testing.assert_allclose(model.encode(TEXTS), enc.encode_docs(TEXTS), atol=1e-5)
    # the query prefix is saved as sentence-transformers' "query" prompt
    np.testing.assert_allclose(
        model.encode(QUERIES, prompt_name="query"), enc.encode_queries(QUERIES), atol=1e-5
    )


def test_sentence_transformers_loads_separate_query_tower(tiny_bert: Path, tmp_path: Path) -> None:
    st = pytest.importorskip("sentence_transformers")
    enc = BiEncoder.load(tiny_bert, precision="fp32").untie()
    _perturb(enc.query_model)
    enc.save(tmp_path / "enc")
    query_model = st.SentenceTransformer(str(tmp_path / "enc" / "query_encoder"), device="cpu")
    doc_model = st.SentenceTransformer(str(tmp_path / "enc"), device="cpu")
    np.testing.assert_allclose(query_model.encode(QUERIES), enc.encode_queries(QUERIES), atol=1e-5)
    np.testing.assert_allclose(doc_model.encode(TEXTS), enc.encode_docs(TEXTS), atol=1e-5)


@pytest.mark.slow
def test_bundled_minilm_matches_sentence_transformers() -> None:
    st = pytest.importorskip("sentence_transformers")
    from ar2.encoders import default_model_path

    path = default_model_path()
    enc = BiEncoder.load(path, precision="fp32")
    assert (enc.config.pooling, enc.config.normalize, enc.dim) == ("mean", True, 384)
    reference = st.SentenceTransformer(str(path), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(enc.encode_docs(TEXTS), reference, atol=1e-5)


# ---------------------------------------------------------------- bad folders


def test_bad_model_folder_raises_without_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    (tmp_path / "empty").mkdir()
    for target in (
        tmp_path / "empty",
        tmp_path / "missing",
        "sentence-transformers/all-MiniLM-L6-v2",
    ):
        for cls in (BiEncoder, CrossEncoder):
            with pytest.raises(Ar2Error, match="no config.json.*Fix:"):
                cls.load(target)


# ---------------------------------------------------------------- CrossEncoder


@pytest.fixture
def ranker(tiny_bert: Path) -> CrossEncoder:
    import torch

    torch.manual_seed(0)  # the new head's weights: the same whatever ran before
    with pytest.warns(UserWarning, match="new head"):
        return CrossEncoder.load(tiny_bert, precision="fp32")


def test_cross_encoder_scores(ranker: CrossEncoder) -> None:
    scores = ranker.score_pairs(PAIRS)
    assert scores.shape == (len(PAIRS),)
    assert scores.dtype == np.float32
    assert len(set(scores.tolist())) == len(PAIRS)  # a real function of the input
    one = ranker.score("cats", ["cats eat fish", "dogs chase balls", "a"])
    assert one.shape == (3,)
    assert ranker.score("a query with no hits", []).shape == (0,)  # found by the API fuzzer


def test_cross_encoder_training_cut_off(ranker: CrossEncoder) -> None:
    # 6 tokens = [CLS] cats [SEP] cats eat [SEP]: the rest of the document is cut off
    cut = ranker.logits([("cats", "cats eat fish dogs")], max_length=6).detach().numpy()
    # the new head's logits are small (about 3e-3): compare them at their own scale
    np.testing.assert_allclose(cut, ranker.score_pairs([("cats", "cats eat")]), rtol=1e-4)
    full = ranker.logits([("cats", "cats eat fish dogs")]).detach().numpy()
    assert not np.allclose(full, cut, rtol=1e-3, atol=0)


def test_cross_encoder_starts_from_a_saved_bi_encoder(tiny_bert: Path, tmp_path: Path) -> None:
    # a trained retriever's folder (its manifest holds an EncoderConfig) is a valid start
    BiEncoder.load(tiny_bert, pooling="cls").save(tmp_path / "retriever")
    with pytest.warns(UserWarning, match="new head"):
        ranker = CrossEncoder.load(tmp_path / "retriever", max_length=40)
    assert ranker.config.max_length == 40 and ranker.score("cats", ["cats eat"]).shape == (1,)


def test_cross_encoder_matches_transformers(ranker: CrossEncoder) -> None:
    # reference: the same model called directly on padded pairs
    tokenizer, model = ranker.tokenizer, ranker.model
    inputs = tokenizer(
        [q for q, _ in PAIRS], [d for _, d in PAIRS], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        reference = model(**inputs).logits[:, 0].numpy()
    np.testing.assert_allclose(ranker.score_pairs(PAIRS), reference, atol=1e-5)


def test_cross_encoder_batching_and_order(tiny_bert: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = CrossEncoder.load(tiny_bert, precision="fp32")
        singles = CrossEncoder.load(tiny_bert, precision="fp32", batch_size=1)
        threes = CrossEncoder.load(tiny_bert, precision="fp32", batch_size=3)
    # a fresh head is random: give all three the same weights
    singles.model.load_state_dict(default.model.state_dict())
    threes.model.load_state_dict(default.model.state_dict())
    scores = default.score_pairs(PAIRS)
    np.testing.assert_allclose(singles.score_pairs(PAIRS), scores, atol=1e-5)
    np.testing.assert_allclose(threes.score_pairs(PAIRS), scores, atol=1e-5)
    np.testing.assert_allclose(default.score_pairs(PAIRS[::-1]), scores[::-1], atol=1e-5)
    for i, pair in enumerate(PAIRS):
        np.testing.assert_allclose(default.score_pairs([pair])[0], scores[i], atol=1e-5)


def test_cross_encoder_uses_title(ranker: CrossEncoder) -> None:
    doc = Doc("d1", "eat fish and sing", title="cats")
    np.testing.assert_allclose(
        ranker.score("what do cats eat", [doc]),
        ranker.score_pairs([("what do cats eat", "cats eat fish and sing")]),
        atol=1e-6,
    )
    assert not np.allclose(
        ranker.score("what do cats eat", [doc]),
        ranker.score("what do cats eat", [Doc("d1", "eat fish and sing")]),
        atol=1e-6,
    )


def test_cross_encoder_save_load(ranker: CrossEncoder, tmp_path: Path) -> None:
    scores = ranker.score_pairs(PAIRS)
    ranker.save(tmp_path / "ranker")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = CrossEncoder.load(tmp_path / "ranker")
    assert not [w for w in caught if "new head" in str(w.message)]  # the head was saved
    assert loaded.config == ranker.config
    _assert_same(loaded.score_pairs(PAIRS), scores)
    manifest = json.loads((tmp_path / "ranker" / "manifest.json").read_text())
    assert manifest["kind"] == "cross_encoder"


def test_sentence_transformers_cross_encoder_loads_saved_folder(
    ranker: CrossEncoder, tmp_path: Path
) -> None:
    st = pytest.importorskip("sentence_transformers")
    ranker.save(tmp_path / "ranker")
    model = st.CrossEncoder(str(tmp_path / "ranker"), device="cpu")
    # identity activation: predict returns the raw logits, not sigmoid(logits)
    np.testing.assert_allclose(model.predict(PAIRS), ranker.score_pairs(PAIRS), atol=1e-5)


def test_encode_docs_to_a_file_equals_encoding_in_memory(tiny_bert: Path, tmp_path: Path) -> None:
    from ar2.encoders import bi_encoder

    encoder = BiEncoder.load(tiny_bert, precision="fp32")
    docs = [Doc(f"d{i}", f"cats eat fish {i % 7} " * (1 + i % 5), "Cats") for i in range(50)]
    bi_encoder._CHUNK, saved = 16, bi_encoder._CHUNK  # several chunks
    try:
        mapped = encoder.encode_docs_to(tmp_path / "v.npy", iter(docs), len(docs))
    finally:
        bi_encoder._CHUNK = saved
    assert isinstance(mapped, np.memmap) and mapped.shape == (50, encoder.dim)
    np.testing.assert_allclose(mapped, encoder.encode_docs(docs), atol=1e-6)
    assert not list(tmp_path.glob("*.tmp.npy"))
    with pytest.raises(ValueError, match="count=49"):
        encoder.encode_docs_to(tmp_path / "w.npy", iter(docs), 49)
    assert sorted(f.name for f in tmp_path.glob("*.npy")) == ["v.npy"]  # nothing half-written


# ---------------------------------------------------------------- CrossEncoder: cosine head


def _cosine_reference(model_dir: Path, pairs: list[tuple[str, str]], scale: float) -> np.ndarray:
    """Each pair alone, unpadded: one joint pass with token types 0, the mean of the states
    up to the first ``[SEP]`` (included) against the mean of the rest, cosine x scale."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    out = []
    for query, doc in pairs:
        ids = tokenizer(query, doc, return_tensors="pt")["input_ids"]
        split = ids[0].tolist().index(tokenizer.sep_token_id) + 1
        with torch.no_grad():
            hidden = model(input_ids=ids, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        q, d = hidden[0, :split].mean(0), hidden[0, split:].mean(0)
        out.append(scale * float(torch.nn.functional.cosine_similarity(q, d, dim=0)))
    return np.asarray(out, dtype=np.float32)


def test_cosine_head_matches_hand_pooling(tiny_bert: Path) -> None:
    ranker = CrossEncoder.load(tiny_bert, precision="fp32", head="cosine", scale=7.0)
    reference = _cosine_reference(tiny_bert, PAIRS, 7.0)
    np.testing.assert_allclose(ranker.score_pairs(PAIRS), reference, atol=1e-5)  # padded
    training = ranker.logits(PAIRS).detach().numpy()  # the training path, padded the other way
    np.testing.assert_allclose(training, reference, atol=1e-5)
    assert len(set(np.round(reference, 4).tolist())) == len(PAIRS)  # a function of the input


def test_cosine_head_needs_no_new_weights_and_round_trips(tiny_bert: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ranker = CrossEncoder.load(tiny_bert, precision="fp32", head="cosine")
    assert not [w for w in caught if "new head" in str(w.message)]
    assert not any(name.startswith("classifier") for name, _ in ranker.model.named_parameters())
    scores = ranker.score_pairs(PAIRS)
    ranker.save(tmp_path / "ranker")
    loaded = CrossEncoder.load(tmp_path / "ranker")  # the head comes from the manifest
    assert loaded.config.head == "cosine" and loaded.config == ranker.config
    _assert_same(loaded.score_pairs(PAIRS), scores)


def test_a_classifier_ranker_can_start_a_cosine_one(ranker: CrossEncoder, tmp_path: Path) -> None:
    ranker.save(tmp_path / "ranker")
    cosine = CrossEncoder.load(tmp_path / "ranker", head="cosine")  # its encoder, no classifier
    expected = _cosine_reference(tmp_path / "ranker", PAIRS[:2], cosine.config.scale)
    np.testing.assert_allclose(cosine.score_pairs(PAIRS[:2]), expected, atol=1e-5)
