"""The retriever kinds (:data:`KINDS`: ``dense``, ``sparse``, ``bm25``, ``hybrid``) and the one
place each is built: over a corpus (:class:`Retrievers`: ``ar2 eval``, the training report,
mining) or from an index or run folder (:func:`from_folder`: ``ar2 serve``, ``ar2 search``). A
system is named by a spec, ``kind`` or ``kind:MODEL`` (:func:`parse_spec`).

Example:
    >>> from ar2.types import Doc, Query
    >>> systems = Retrievers([Doc("d1", "cats eat fish"), Doc("d2", "dogs chase balls")])
    >>> run = systems.get("bm25").retrieve([Query("q", "what do cats eat")], k=1)
    >>> [h.doc_id for h in run["q"]]
    ['d1']
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ar2.config import BM25Config, IndexConfig
from ar2.errors import Ar2Error
from ar2.types import Doc

if TYPE_CHECKING:
    from ar2.encoders import BiEncoder
    from ar2.index import BM25Index, FaissIndex
    from ar2.pipeline import BM25Retriever, DenseRetriever, Retriever, SparseRetriever

log = logging.getLogger(__name__)

KINDS: dict[str, str] = {
    "dense": "a bi-encoder's vectors in a FAISS index (default model: all-MiniLM-L6-v2)",
    "sparse": "inference-free learned sparse: documents' term weights in a Seismic index, each "
    "query the IDF-weighted bag of its tokens (no model per query; sparse:PATH names the model)",
    "bm25": "BM25 (bm25s: Lucene BM25, English Snowball stemmer and stopwords) over title + text",
    "hybrid": "reciprocal rank fusion (ar2.fusion.rrf) of bm25 and dense, each at the depth",
}
"""Every retriever kind, by name, in order of preference (a service's default mode is the
first it has): what the CLI, the HTTP API's modes and the docs list."""
HYBRID_DEPTH = 100
"""Hits each part of a hybrid retriever contributes to the fusion."""


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"dense:PATH"`` into ``("dense", "PATH")``; unknown kinds list the valid ones.

    Example:
        >>> parse_spec("dense:runs/model"), parse_spec("bm25")
        (('dense', 'runs/model'), ('bm25', None))
    """
    kind, _, model = spec.partition(":")
    if kind not in KINDS:
        raise Ar2Error(
            f"unknown system {spec!r}. Fix: choose from {', '.join(KINDS)} (dense:PATH and "
            "hybrid:PATH name a model folder)"
        )
    if kind == "bm25" and model:
        raise Ar2Error(f"system {spec!r}: bm25 takes no model folder. Fix: write bm25")
    return kind, model or None


def bm25(docs: Iterable[Doc] | BM25Index, source: str = "the corpus") -> BM25Retriever:
    """BM25 over ``docs`` with the default settings (``source`` names them in errors), or
    over an index already built."""
    from ar2.index import BM25Index
    from ar2.pipeline import BM25Retriever

    if not isinstance(docs, BM25Index):
        docs = BM25Index.build(docs, BM25Config(), source)
    return BM25Retriever(docs)


def dense(encoder: BiEncoder, index: FaissIndex, progress: bool = False) -> DenseRetriever:
    """``encoder``'s queries searched in ``index`` (built with the same encoder's documents)."""
    from ar2.pipeline import DenseRetriever

    return DenseRetriever(encoder, index, progress=progress)


def hybrid(parts: list[Retriever], depth: int = HYBRID_DEPTH) -> Retriever:
    """Reciprocal rank fusion of ``parts``, each asked for ``depth`` hits."""
    from ar2.pipeline import HybridRetriever

    return HybridRetriever(parts, depth=depth)


class Retrievers:
    """The systems of one corpus, by spec; each part built once (one BM25 index, one dense
    index per model), with a description of each for reports (:attr:`descriptions`)."""

    def __init__(
        self,
        corpus: list[Doc],
        index: IndexConfig | None = None,
        precision: str = "auto",
        depth: int = HYBRID_DEPTH,
        source: str = "the corpus",
    ) -> None:
        self.corpus, self.index, self.precision = corpus, index or IndexConfig(), precision
        self.depth, self.source = depth, source
        self._bm25: Retriever | None = None
        self._dense: dict[str | None, DenseRetriever] = {}
        self._sparse: dict[str, SparseRetriever] = {}
        self.descriptions: dict[str, Any] = {}

    def get(self, spec: str) -> Retriever:
        """The retriever a spec names (``bm25``, ``dense[:MODEL]``, ``sparse:MODEL``,
        ``hybrid[:MODEL]``)."""
        kind, model = parse_spec(spec)
        if kind == "bm25":
            return self.bm25()
        if kind == "dense":
            return self.dense(model)
        if kind == "sparse":
            if not model:
                raise Ar2Error(
                    f"system {spec!r}: no sparse model is bundled. Fix: write sparse:PATH, "
                    "PATH a sparse encoder folder"
                )
            return self.sparse(model)
        return hybrid([self.bm25(), self.dense(model)], self.depth)

    def bm25(self) -> Retriever:
        """BM25 over the corpus (built on first use)."""
        if self._bm25 is None:
            log.info("bm25: indexing %d documents", len(self.corpus))
            self._bm25 = bm25(self.corpus, self.source)
            self.descriptions["bm25"] = {"bm25s": BM25Config().__dict__}
        return self._bm25

    def dense(self, model: str | None = None) -> DenseRetriever:
        """The corpus encoded by ``model`` (default: the bundled MiniLM) in a FAISS index."""
        from ar2.encoders import BiEncoder
        from ar2.index import FaissIndex

        if model not in self._dense:
            encoder = BiEncoder.load(model, precision=self.precision)
            log.info("dense (%s): encoding %d documents", encoder.source, len(self.corpus))
            vectors = encoder.encode_docs(self.corpus, progress=True)
            index = FaissIndex.build(vectors, [d.id for d in self.corpus], self.index)
            self._dense[model] = dense(encoder, index, progress=True)
            self.descriptions[f"dense:{model or 'default'}"] = {
                "encoder": encoder.describe(),
                "faiss": index.factory,
                "similarity": encoder.describe()["similarity"],
            }
        return self._dense[model]

    def sparse(self, model: str) -> SparseRetriever:
        """The corpus's term weights from the inference-free sparse encoder ``model``, in a
        Seismic index."""
        from ar2.encoders import sparse as encoder
        from ar2.index.sparse import index_corpus
        from ar2.pipeline import SparseRetriever

        if model not in self._sparse:
            loaded = encoder.load(model)
            log.info("sparse (%s): encoding %d documents", model, len(self.corpus))
            index = index_corpus(loaded, self.corpus)
            self._sparse[model] = SparseRetriever(index)
            self.descriptions[f"sparse:{model}"] = index.describe()
        return self._sparse[model]

    def note_truncation(self) -> None:
        """Record (and warn of) the queries and documents each dense system's encoder cut."""
        for model, retriever in self._dense.items():
            note = retriever.encoder.truncation()
            self.descriptions[f"dense:{model or 'default'}"]["truncation"] = note
            if any(c.cut for c in retriever.encoder.cuts.values()):
                fix = "a model that takes longer inputs, or longer cut-offs if this one allows"
                log.warning("dense:%s: %s. Fix: %s", model or "default", note, fix)


def dense_from_folder(
    path: str | Path, encoder_dir: str | Path | None = None, backend: str = "torch"
) -> DenseRetriever:
    """A dense index folder and the encoder its manifest names, with the same settings
    (queries are encoded as the documents were); ``encoder_dir`` replaces the encoder's path
    (a run folder that was moved); ``backend`` is where queries are encoded
    (:data:`ar2.encoders.onnx_runtime.BACKENDS`)."""
    from ar2.encoders import BiEncoder
    from ar2.index import load_dense, read_manifest

    encoder_info = read_manifest(path, "dense")["encoder"]
    source = Path(encoder_dir or encoder_info["source"])
    if not source.exists():
        raise Ar2Error(
            f"{path}: its encoder {source} does not exist (moved or deleted). "
            "Fix: pass the encoder folder it was built with (--retriever PATH)"
        )
    encoder = BiEncoder.load(source, backend=backend, **encoder_info["config"])
    index = load_dense(path)
    if index.dim != encoder.dim:
        raise Ar2Error(
            f"{path}: its vectors have {index.dim} dimensions, but the encoder {source} makes "
            f"{encoder.dim}. Fix: pass the encoder folder it was built with (--retriever PATH)"
        )
    return dense(encoder, index)


def documents(path: str | Path, retriever: Retriever | None = None) -> Mapping[str, Doc]:
    """An index folder's documents by id: its ``corpus.jsonl`` read into memory, or, for the
    dense ``retriever`` of an index in a Milvus collection, the collection itself, fetched
    by id (:class:`ar2.index.milvus.StoreDocs`)."""
    from ar2.index import read_manifest, store_of
    from ar2.index.base import iter_docs

    if store_of(read_manifest(path)) != "milvus":
        return {d.id: d for d in iter_docs(path)}
    from ar2.index.milvus import StoreDocs

    if retriever is None:
        retriever = dense_from_folder(path)
    return StoreDocs(retriever.index)  # type: ignore[attr-defined]


def served(
    path: str | Path, encoder_dir: str | Path | None = None, backend: str = "torch",
    text_modes: bool = True,
) -> tuple[Mapping[str, Doc], dict[str, Retriever]]:  # fmt: skip
    """An index folder's documents (:func:`documents`) and the retrievers it serves
    (:func:`from_folder`). For an index in a Milvus collection, ``bm25`` and ``hybrid`` index
    the collection's texts at start-up, a batch at a time (no corpus is held). Without
    ``text_modes`` no BM25 is built: a dense index serves ``dense`` alone (as a service
    taking updates does)."""
    from ar2.index import read_manifest, store_of

    if store_of(read_manifest(path)) != "milvus":
        docs = documents(path)
        return docs, from_folder(path, docs if text_modes else None, encoder_dir, backend)
    found: dict[str, Retriever] = {"dense": dense_from_folder(path, encoder_dir, backend)}
    store = documents(path, found["dense"])
    if not text_modes:
        return store, found
    log.info("bm25: indexing the texts of the Milvus collection of %s", path)
    found["bm25"] = bm25(store.stream(), f"the Milvus collection of {path}")  # type: ignore[attr-defined]
    return store, found | {"hybrid": hybrid([found["bm25"], found["dense"]])}


def from_folder(
    path: str | Path,
    docs: Mapping[str, Doc] | None = None,
    encoder_dir: str | Path | None = None,
    backend: str = "torch",
) -> dict[str, Retriever]:
    """The retrievers an index folder serves, by kind: its own (``bm25``, ``dense`` or
    ``sparse``), and with ``docs`` given, ``bm25`` over them (default settings, as ``ar2
    eval``'s baseline) and, for a dense index, ``hybrid``. ``encoder_dir`` replaces the
    encoder path the manifest names (a run folder that was moved); ``backend`` is where
    queries are encoded."""
    from ar2.index import BM25Index, SparseIndex, read_manifest
    from ar2.pipeline import SparseRetriever

    kind = read_manifest(path).get("kind")
    if kind == "bm25":
        return {"bm25": bm25(BM25Index.load(path))}
    found: dict[str, Retriever]
    if kind == "sparse":
        found = {"sparse": SparseRetriever(SparseIndex.load(path))}
        return found | ({"bm25": bm25(docs.values(), f"{path}/corpus.jsonl")} if docs else {})
    found = {"dense": dense_from_folder(path, encoder_dir, backend)}
    if docs is None:
        return found
    if not docs:
        log.warning("the index stores no documents: no bm25/hybrid modes, no titles or snippets")
        return found
    found["bm25"] = bm25(docs.values(), f"{path}/corpus.jsonl")
    return found | {"hybrid": hybrid([found["bm25"], found["dense"]])}
