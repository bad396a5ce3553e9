"""The inference-free learned sparse retriever: documents through a SPLADE encoder, queries as
IDF-weighted bags of their tokens, no model run per query.

Geng et al. 2024, "Towards Competitive Search Relevance For Inference-Free Learned Sparse
Retrievers" (arXiv 2411.04403):

- a document's weight for vocabulary term ``t`` is ``w_d(t) = max_i log(1 + relu(l_it))``
  over its token positions ``i``, where ``l_i`` are the masked-language-model logits of
  position ``i`` (SPLADE's max pooling);
- a query is ``q(t) = idf(t)`` for each token ``t`` it contains, else 0: a lookup;
- the score is ``s(q, d) = sum_t q(t) w_d(t)``.

The model is sentence-transformers' own ``SparseEncoder``: a ``Router`` whose query route is a
frozen ``SparseStaticEmbedding`` holding the IDFs, and whose document route is a fill-mask
``Transformer`` followed by ``SpladePooling``. Saved folders load with
``sentence_transformers.SparseEncoder(path)``; ar2 adds ``manifest.json``.

**Starting from a bi-encoder.** all-MiniLM-L6-v2 ships no MLM head. BERT's head is a transform
(a dense layer, GELU, LayerNorm) and a decoder whose weights are the word embeddings (tied), with
a bias. Loaded as a masked language model, the decoder is the model's own embeddings and the
bias 0, but the transform would be random. :func:`start` sets its dense layer to the identity
(LayerNorm's default is already 1 and 0), so position ``i`` scores term ``t`` by how its
contextual state, through GELU and LayerNorm, aligns with ``t``'s input embedding: the tokens a
document contains score high before any training (a lexical start), and their neighbours in
embedding space a little (its expansion). Every term is then positive somewhere, so
:func:`calibrate` sets the head's bias to keep a document's strongest ``terms`` (128 in
``ar2 sparse``). A folder that has a trained head keeps it.

**IDF.** BM25's, over the corpus as the document encoder tokenises it (each document's
distinct token ids): ``idf(t) = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5))``; special tokens get
0, so they never score. A token no document holds gets the largest value, which matters only
where a document's expansion gives it weight.

This module imports torch and sentence-transformers: only code that builds, trains or encodes
with a sparse model imports it.

Example:
    >>> round(float(bm25_idf(np.array([0, 1, 4]), 4)[1]), 4)  # df 1 of N 4: log(1 + 3.5 / 1.5)
    1.204
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ar2 import __version__
from ar2._io import atomic_dir, atomic_write_json
from ar2._optional import require
from ar2.encoders import _hf
from ar2.encoders._runtime import autocast, chunks, pick_device, use_bf16
from ar2.errors import Ar2Error

HEAD = "cls.predictions.transform.dense.weight"
"""The parameter that tells whether a folder has a trained MLM head."""
KIND = "sparse_encoder"


def bm25_idf(df: np.ndarray, n: int) -> np.ndarray:
    """BM25's IDF of each term from its document frequency ``df`` (``(V,)``) in ``n``
    documents: ``log(1 + (n - df + 0.5) / (df + 0.5))``, always positive."""
    df = np.asarray(df, dtype=np.float64)  # (V,)
    return np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)  # (V,)


def corpus_idf(tokenizer: Any, texts: Iterable[str], max_length: int) -> np.ndarray:
    """``(V,)`` BM25 IDFs of the tokenizer's vocabulary over ``texts``, each cut to
    ``max_length`` tokens as the document encoder cuts it; special tokens 0.

    Example:
        >>> from transformers import BertTokenizerFast
        >>> import pathlib, tempfile
        >>> v = pathlib.Path(tempfile.mkdtemp()) / "vocab.txt"
        >>> _ = v.write_text("[PAD]\\n[UNK]\\n[CLS]\\n[SEP]\\n[MASK]\\ncats\\nfish\\n")
        >>> idf = corpus_idf(BertTokenizerFast(vocab=str(v)), ["cats fish", "cats"], 8)
        >>> [round(float(x), 3) for x in idf]  # cats in both documents, fish in one
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.182, 0.693]
    """
    df = np.zeros(len(tokenizer), dtype=np.int64)  # (V,)
    n = 0
    for chunk in chunks(texts, 4096):
        ids = tokenizer(chunk, truncation=True, max_length=max_length)["input_ids"]
        for row in ids:
            df[np.unique(np.asarray(row, dtype=np.int64))] += 1
        n += len(chunk)
    if n == 0:
        raise Ar2Error("no documents to take IDFs from. Fix: give the corpus's documents")
    idf = bm25_idf(df, n)  # (V,)
    idf[list(tokenizer.all_special_ids)] = 0.0
    return idf


def start(
    path: str | Path, idf: np.ndarray, max_length: int = 256, device: str | None = None
) -> Any:
    """A ``SparseEncoder`` from the encoder folder ``path`` (a bi-encoder or a masked language
    model) with the query weights ``idf`` (``(V,)``, :func:`corpus_idf`), on ``device``
    (default: the GPU where there is one, as every other stage trains). A missing MLM head
    starts as the identity transform over the tied word embeddings (see the module's text)."""
    torch = require("torch")
    st = require("sentence_transformers", extra="train")
    from sentence_transformers.base.modules import Router, Transformer
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling

    path = _hf.check_model_dir(path)
    document = _quiet(lambda: Transformer(
        str(path), transformer_task="fill-mask", max_seq_length=max_length))  # fmt: skip
    tokenizer = document.tokenizer
    if len(idf) != len(tokenizer):
        raise Ar2Error(
            f"{len(idf)} IDFs for a vocabulary of {len(tokenizer)} tokens. Fix: compute them "
            f"with the tokenizer of {path}"
        )
    if not has_head(path):
        _identity_transform(document.auto_model)
    weights = torch.as_tensor(np.asarray(idf, dtype=np.float32))  # (V,)
    query = SparseStaticEmbedding(tokenizer, weight=weights, frozen=True)
    router = Router.for_query_document(
        query_modules=[query], document_modules=[document, SpladePooling("max")]
    )
    device = device or pick_device()
    return st.SparseEncoder(modules=[router], similarity_fn_name="dot", device=device)


def calibrate(model: Any, texts: Sequence[str], terms: int) -> float:
    """Set the MLM head's bias so that the median document of ``texts`` (a sample of the
    corpus) has ``terms`` non-zero weights, and special tokens none; returns the threshold.

    An identity-transform head makes every term positive somewhere in a document (all 30,522
    of MiniLM's, mean weight 1.3 on SciFact), which no inverted index can hold and which the
    FLOPS penalty would spend its first hundreds of steps undoing. A document's term ``t`` is
    non-zero when its largest logit over the positions exceeds ``-b_t``; one bias for every
    term, minus the median over the sample of each document's ``terms``-th largest max-pooled
    logit, keeps each document's strongest terms (its own tokens first) and the ranking among
    them unchanged. It runs in fp32 (a sample, once).
    """
    torch = require("torch")
    document = _document(model)
    head = document.auto_model.cls.predictions
    with torch.no_grad():
        head.bias.zero_()
        pooled = []
        for chunk in chunks(texts, 16):
            features = _features(model, chunk, "document")
            out = document(features)
            logits = out["token_embeddings"].float()  # (n, seq, V)
            mask = features["attention_mask"][..., None].bool()  # (n, seq, 1)
            pooled.append(logits.masked_fill(~mask, float("-inf")).amax(dim=1))  # (n, V)
        values = torch.cat(pooled)  # (n, V)
        special = list(model.tokenizer.all_special_ids)
        values[:, special] = float("-inf")
        keep = min(max(terms, 1), values.shape[1] - len(special))
        threshold = float(values.topk(keep, dim=1).values[:, -1].median())
        head.bias.fill_(-threshold)
        head.bias[special] = -1e4
    return threshold


def load(path: str | Path, device: str | None = None) -> Any:
    """A saved inference-free ``SparseEncoder`` (:func:`save`), on ``device`` (default: the
    GPU where there is one). Every caller encodes documents with it; queries never need it
    (:class:`QueryBags`)."""
    path = Path(path)
    manifest = _hf.read_json(path / _hf.MANIFEST)
    if manifest.get("kind") != KIND:
        raise Ar2Error(
            f"{path}: not an inference-free sparse encoder (manifest kind "
            f"{manifest.get('kind')!r}). Fix: pass a folder ar2 saved as {KIND}"
        )
    st = require("sentence_transformers", extra="train")
    return _quiet(lambda: st.SparseEncoder(str(path), device=device or pick_device()))


def save(model: Any, path: str | Path, source: str, settings: dict[str, Any]) -> None:
    """Save ``model`` atomically as a sentence-transformers folder plus ``manifest.json``
    (what it started from, the settings that trained it, its vocabulary size and IDFs'
    range)."""
    idf = query_idf(model)
    with atomic_dir(path) as tmp:
        model.save(str(tmp))
        atomic_write_json(tmp / _hf.MANIFEST, {
            "kind": KIND, "ar2_version": __version__, "source": source,
            "vocabulary": int(idf.shape[0]), "max_length": document_max_length(model),
            "idf": {"nonzero": int((idf > 0).sum()), "min_nonzero": float(idf[idf > 0].min()),
                    "max": float(idf.max())},
            "config": settings})  # fmt: skip


def describe(path: str | Path) -> dict[str, Any]:
    """What an index records of the sparse encoder saved at ``path``: its manifest, and where
    it is."""
    return _hf.read_json(Path(path) / _hf.MANIFEST) | {"path": str(Path(path).resolve())}


def query_idf(model: Any) -> np.ndarray:
    """``(V,)`` the query route's weights (the IDFs)."""
    return model[0].sub_modules["query"][0].weight.detach().cpu().numpy()  # type: ignore[no-any-return]


def document_max_length(model: Any) -> int:
    """The document encoder's token limit."""
    return int(_document(model).max_seq_length)


def document_weights(model: Any, texts: Sequence[str], precision: str = "auto") -> Any:
    """``(n, V)`` the documents' term weights, with gradients (training); bf16 autocast where
    ``precision`` resolves to it (:func:`ar2.encoders._runtime.use_bf16`)."""
    device = str(model.device)
    with autocast(device, use_bf16(precision, device)):
        return _forward(model, texts, "document")  # (n, V)


def query_weights(model: Any, texts: Sequence[str]) -> Any:
    """``(n, V)`` the queries' IDF bags (no gradient: the query route is frozen)."""
    with require("torch").no_grad():
        return _forward(model, texts, "query").float()  # (n, V)


def encode_documents(
    model: Any,
    texts: Sequence[str],
    batch_size: int = 16,
    precision: str = "auto",
    progress: bool = False,
) -> Any:
    """A ``scipy.sparse.csr_matrix`` ``(n, V)`` of the documents' term weights (inference), in
    bf16 autocast where ``precision`` resolves to it; ``progress`` shows a bar of the batches
    with its time estimate."""
    sparse = require("scipy.sparse", extra="train")
    device = str(model.device)
    with autocast(device, use_bf16(precision, device)):
        weights = model.encode_document(list(texts), batch_size=batch_size,
                                        convert_to_sparse_tensor=True,
                                        show_progress_bar=progress)  # fmt: skip
    weights = weights.coalesce().cpu().float()  # (n, V)
    rows, cols = weights.indices().numpy()
    shape = tuple(weights.shape)
    return sparse.csr_matrix((weights.values().numpy(), (rows, cols)), shape=shape)


class QueryBags:
    """The inference-free query side without a model: each text's distinct tokens (no special
    tokens, cut at ``max_length``), weighted by their IDF, as a ``scipy.sparse`` row. It needs
    the ``tokenizers`` library and numpy only, never torch: what ``ar2 serve`` runs per query.
    It gives what the model's query route (``SparseEncoder.encode_query``) gives.

    Args:
        tokenizer_json: the tokenizer, serialised (a fast tokenizer's ``tokenizer.json``).
        idf: ``(V,)`` the query weights.
    """

    def __init__(self, tokenizer_json: str, idf: np.ndarray, max_length: int = 512) -> None:
        tokenizers = require("tokenizers", extra="train")
        self.tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.idf = np.asarray(idf, dtype=np.float32)  # (V,)

    def __call__(self, texts: Sequence[str]) -> Any:
        """``(len(texts), V)`` CSR rows of IDF weights."""
        sparse = require("scipy.sparse", extra="eval")
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        rows, cols = [], []
        for row, encoding in enumerate(encodings):
            ids = np.unique(np.asarray(encoding.ids, dtype=np.int64))
            ids = ids[self.idf[ids] > 0]  # special and padding tokens weigh nothing
            rows.append(np.full(len(ids), row))
            cols.append(ids)
        r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
        shape = (len(encodings), len(self.idf))
        return sparse.csr_matrix((self.idf[c], (r, c)), shape=shape, dtype=np.float32)


def tokenizer_json(model: Any) -> str:
    """The model's (fast) tokenizer, serialised, for :class:`QueryBags`."""
    backend = getattr(model.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise Ar2Error(
            "the sparse encoder's tokenizer is not a fast (Rust) tokenizer, which the query "
            "side needs. Fix: start the model from a folder with a tokenizer.json"
        )
    return str(backend.to_str())


def vocabulary(model: Any) -> list[str]:
    """The model's tokens in id order (the columns of its weights)."""
    tokenizer = model.tokenizer
    return [str(t) for t in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))]


def has_head(path: Path) -> bool:
    """Whether the folder's weights hold a trained MLM head (:func:`start` keeps it)."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        index = path / "model.safetensors.index.json"
        return index.is_file() and HEAD in json.loads(index.read_text()).get("weight_map", {})
    safetensors = require("safetensors")
    for file in files:
        with safetensors.safe_open(str(file), framework="numpy") as handle:
            if HEAD in handle.keys():
                return True
    return False


def _document(model: Any) -> Any:
    """The document route's fill-mask Transformer module."""
    return model[0].sub_modules["document"][0]


def _forward(model: Any, texts: Sequence[str], task: str) -> Any:
    """``(n, V)`` the route ``task``'s weights of ``texts``, by a forward pass (``encode_*``
    would put the model in eval mode mid-training)."""
    return model(_features(model, texts, task), task=task)["sentence_embedding"]


def _features(model: Any, texts: Sequence[str], task: str) -> dict[str, Any]:
    """The route ``task``'s tokenised ``texts``, on the model's device."""
    features = model.preprocess(list(texts), task=task)
    return {k: v.to(model.device) if hasattr(v, "to") else v for k, v in features.items()}


def _identity_transform(model: Any) -> None:
    """The MLM head's transform dense layer set to the identity, its bias to 0."""
    torch = require("torch")
    dense = model.cls.predictions.transform.dense
    with torch.no_grad():
        dense.weight.copy_(torch.eye(dense.weight.shape[0], dtype=dense.weight.dtype))
        dense.bias.zero_()


def _quiet(make: Any) -> Any:
    """``make()`` with transformers' load report (the head it initialises) silenced."""
    import logging

    names = ("transformers.modeling_utils", "sentence_transformers")
    levels = [logging.getLogger(n).level for n in names]
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return make()
    finally:
        for name, level in zip(names, levels):
            logging.getLogger(name).setLevel(level)
