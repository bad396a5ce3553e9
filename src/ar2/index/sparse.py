"""A learned-sparse index: documents' term weights in a Seismic inverted index.

Seismic (Bruch et al., "Efficient Inverted Indexes for Approximate Retrieval over Learned
Sparse Representations", SIGIR 2024; the ``pyseismic-lsr`` package) keeps, per vocabulary
term, the documents with the largest weights for it, grouped into blocks with summaries, and
answers a sparse query by inner product, visiting only blocks whose summary can still reach the
top ``k``. Two settings trade speed for exactness: ``query_cut`` (only the query's largest
terms are looked up) and ``heap_factor`` (a block is visited when its summary scores at least
this fraction of the current ``k``-th score; 1 visits fewest). Seismic keeps the weights in
half precision, so its scores agree with the exact ones to about 1e-3 (relative).
:meth:`SparseIndex.exact` is the brute-force reference (a sparse matrix product).

A folder holds the Seismic index (its own binary format), the documents' weights
(``weights.npz``, SciPy's sparse format, loaded without pickles), ``ids.txt``, the query
side's vocabulary (``vocabulary.txt``, one token per line in id order), weights
(``query_weights.npy``, the IDFs of an inference-free retriever) and tokenizer
(``tokenizer.json``), and ``manifest.json``: with the last three the folder answers text
queries alone, with no model (:class:`ar2.pipeline.SparseRetriever`).

Example:
    >>> import numpy as np, scipy.sparse as sp
    >>> docs = sp.csr_matrix(np.array([[0, 2.0, 0], [1.0, 0, 1.0]], dtype=np.float32))
    >>> index = SparseIndex.build(docs, ["d1", "d2"], ["a", "b", "c"])  # doctest: +SKIP
    >>> [h.doc_id for h in index.search(sp.csr_matrix(np.array([[1.0, 0, 0]])), 1)[0]]
    ... # doctest: +SKIP
    ['d2']
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ar2._io import atomic_dir, atomic_write_json, atomic_write_lines
from ar2._optional import require
from ar2.errors import Ar2Error
from ar2.index.base import (
    REBUILD_FIX,
    base_manifest,
    read_ids,
    read_manifest,
    write_docs,
    write_ids,
)
from ar2.types import Doc, Hit

KIND = "sparse"
SEISMIC_FILE = "seismic"  # Seismic appends ".index.seismic"
WEIGHTS_FILE = "weights.npz"
VOCABULARY_FILE = "vocabulary.txt"
QUERY_WEIGHTS_FILE = "query_weights.npy"
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class SeismicSettings:
    """Seismic's build and search settings, by its own names. ``heap_factor`` (0, 1]: a
    block is visited when its summary's score reaches ``heap_factor`` times the current
    ``k``-th score, so a lower value visits more and misses less (``tests/test_sparse_index.py``
    measures both directions against the exact product)."""

    n_postings: int = 3500
    centroid_fraction: float = 0.1
    summary_energy: float = 0.4
    query_cut: int = 64
    heap_factor: float = 0.7


class SparseIndex:
    """Documents' sparse term weights, searched by inner product with sparse queries."""

    def __init__(
        self,
        index: Any,
        ids: list[str],
        weights: Any,
        vocabulary: list[str],
        query_weights: np.ndarray | None,
        settings: SeismicSettings,
        query_tokenizer: str | None = None,
    ) -> None:
        self.index, self.ids, self.weights = index, ids, weights
        self.vocabulary, self.query_weights, self.settings = vocabulary, query_weights, settings
        self.query_tokenizer = query_tokenizer  # tokenizer.json text: the query side's

    @classmethod
    def build(
        cls,
        weights: Any,
        ids: Sequence[str],
        vocabulary: Sequence[str],
        query_weights: np.ndarray | None = None,
        settings: SeismicSettings | None = None,
        query_tokenizer: str | None = None,
    ) -> SparseIndex:
        """Index ``weights`` (a ``scipy.sparse`` ``(n, V)`` matrix, row ``i`` the document
        ``ids[i]``) over ``vocabulary`` (``V`` tokens); ``query_weights`` (``(V,)``) and
        ``query_tokenizer`` (``tokenizer.json`` text) are kept for an inference-free query
        side."""
        seismic = require("seismic", extra="sparse")
        sparse = require("scipy.sparse", extra="eval")
        weights = sparse.csr_matrix(weights, dtype=np.float32)
        _check_shapes(weights, ids, vocabulary, query_weights)
        if weights.nnz == 0:
            raise Ar2Error(
                f"no document of the {len(ids)} has a non-zero weight. Fix: check the encoder "
                "(a sparsity penalty too strong zeroes every term)"
            )
        settings = settings or SeismicSettings()
        tokens = _token_keys(len(vocabulary))
        dataset = seismic.SeismicDataset()
        for row in range(weights.shape[0]):
            start, end = weights.indptr[row], weights.indptr[row + 1]
            dataset.add_document(str(row), tokens[weights.indices[start:end]],
                                 weights.data[start:end])  # fmt: skip
        with _to_stderr():
            index = seismic.SeismicIndex.build_from_dataset(
                dataset, n_postings=settings.n_postings,
                centroid_fraction=settings.centroid_fraction,
                summary_energy=settings.summary_energy, num_threads=1)  # fmt: skip
        qw = None if query_weights is None else np.asarray(query_weights, dtype=np.float32)
        return cls(index, list(ids), weights, list(vocabulary), qw, settings, query_tokenizer)

    def search(self, queries: Any, k: int) -> list[list[Hit]]:
        """Top-``k`` hits (positive scores only) for each row of ``queries`` (``(m, V)``
        sparse), through the Seismic index."""
        queries = self._queries(queries)
        tokens = _token_keys(len(self.vocabulary))
        results: list[list[Hit]] = []
        for row in range(queries.shape[0]):
            start, end = queries.indptr[row], queries.indptr[row + 1]
            if start == end or k <= 0:
                results.append([])
                continue
            cut, heap = self.settings.query_cut, self.settings.heap_factor
            terms, values = tokens[queries.indices[start:end]], queries.data[start:end]
            found = self.index.search(str(row), terms, values, min(k, len(self.ids)), cut, heap)
            results.append([Hit(self.ids[int(doc)], float(s)) for _, s, doc in found if s > 0])
        return results

    def exact(self, queries: Any, k: int) -> list[list[Hit]]:
        """The exact top-``k`` by brute force (a sparse matrix product): the reference."""
        scores = (self._queries(queries) @ self.weights.T).toarray()  # (m, n)
        results = []
        for row in scores:
            top = np.argsort(-row, kind="stable")[: max(k, 0)]
            results.append([Hit(self.ids[i], float(row[i])) for i in top if row[i] > 0])
        return results

    def save(
        self,
        path: str | Path,
        extra: dict[str, Any] | None = None,
        docs: Iterable[Doc] = (),
        overwrite: bool = False,
    ) -> None:
        """Save atomically: the Seismic index, the weights, ids, vocabulary, query weights and
        ``manifest.json``; a folder ar2 did not write is replaced only with ``overwrite``."""
        sparse = require("scipy.sparse", extra="eval")
        with atomic_dir(path, overwrite) as tmp:
            with _to_stderr():
                self.index.save(str(tmp / SEISMIC_FILE))
            sparse.save_npz(tmp / WEIGHTS_FILE, self.weights)
            write_ids(tmp, self.ids)
            atomic_write_lines(tmp / VOCABULARY_FILE, self.vocabulary)
            if self.query_weights is not None:
                np.save(tmp / QUERY_WEIGHTS_FILE, self.query_weights)
            if self.query_tokenizer is not None:
                (tmp / TOKENIZER_FILE).write_text(self.query_tokenizer, encoding="utf-8")
            write_docs(tmp, docs)
            atomic_write_json(tmp / "manifest.json", self.describe() | (extra or {}))

    def describe(self) -> dict[str, Any]:
        """The manifest's fields: the library, the settings, the vocabulary and the weights."""
        seismic = require("seismic", extra="sparse")
        nnz = np.diff(self.weights.indptr)  # (n,)
        vocabulary = "\n".join(self.vocabulary).encode()
        record = base_manifest(KIND, len(self.ids)) | {
            "library": f"pyseismic-lsr {_version(seismic)}",
            "seismic": asdict(self.settings),
            "vocabulary": {"file": VOCABULARY_FILE, "size": len(self.vocabulary),
                           "sha256": hashlib.sha256(vocabulary).hexdigest()},
            "document_weights": {"file": WEIGHTS_FILE, "nonzero": int(self.weights.nnz),
                                 "terms_per_document": {"mean": round(float(nnz.mean()), 2),
                                                        "max": int(nnz.max())},
                                 "max": float(self.weights.data.max())},
        }  # fmt: skip
        if self.query_weights is not None:
            qw = self.query_weights
            record["query_weights"] = {"file": QUERY_WEIGHTS_FILE, "kind": "idf",
                                       "nonzero": int((qw > 0).sum()),
                                       "max": float(qw.max())}  # fmt: skip
        if self.query_tokenizer is not None:
            record["query_tokenizer"] = {"file": TOKENIZER_FILE}
        return record

    @classmethod
    def load(cls, path: str | Path) -> SparseIndex:
        """Load a folder written by :meth:`save`.

        Raises:
            Ar2Error: a missing or corrupt part, or parts that disagree on their sizes.
        """
        seismic = require("seismic", extra="sparse")
        sparse = require("scipy.sparse", extra="eval")
        path = Path(path)
        manifest = read_manifest(path, kind=KIND)
        ids = read_ids(path)
        try:
            settings = SeismicSettings(**manifest["seismic"])
            weights = sparse.load_npz(path / WEIGHTS_FILE).tocsr()
            vocabulary = (path / VOCABULARY_FILE).read_text(encoding="utf-8").split("\n")[:-1]
            qw_file = path / QUERY_WEIGHTS_FILE
            query_weights = np.load(qw_file, allow_pickle=False) if qw_file.is_file() else None
            tok_file = path / TOKENIZER_FILE
            tokenizer = tok_file.read_text(encoding="utf-8") if tok_file.is_file() else None
            index = seismic.SeismicIndex.load(str(path / SEISMIC_FILE) + ".index.seismic")
        except (OSError, KeyError, TypeError, ValueError) as err:
            problem = f"{type(err).__name__}: {str(err).strip()[:200]}"
            raise Ar2Error(f"{path}: a missing or corrupt sparse index ({problem}). "
                           f"{REBUILD_FIX}") from None  # fmt: skip
        _check_shapes(weights, ids, vocabulary, query_weights, where=f"{path}: ")
        if index.len != len(ids):
            raise Ar2Error(f"{path}: the Seismic index holds {index.len} documents, ids.txt "
                           f"{len(ids)}. {REBUILD_FIX}")  # fmt: skip
        return cls(index, ids, weights, vocabulary, query_weights, settings, tokenizer)

    def _queries(self, queries: Any) -> Any:
        sparse = require("scipy.sparse", extra="eval")
        queries = sparse.csr_matrix(queries, dtype=np.float32)
        if queries.shape[1] != len(self.vocabulary):
            raise Ar2Error(
                f"queries over {queries.shape[1]} terms, but the index's vocabulary has "
                f"{len(self.vocabulary)}. Fix: encode the queries with the index's model"
            )
        return queries


def _check_shapes(
    weights: Any, ids: Sequence[str], vocabulary: Sequence[str], query_weights: Any, where: str = ""
) -> None:
    problems = []
    if weights.shape[0] != len(ids):
        problems.append(f"{weights.shape[0]} rows of weights but {len(ids)} ids")
    if weights.shape[1] != len(vocabulary):
        problems.append(f"{weights.shape[1]} weight columns but {len(vocabulary)} tokens")
    if query_weights is not None and len(query_weights) != len(vocabulary):
        problems.append(f"{len(query_weights)} query weights but {len(vocabulary)} tokens")
    if problems:
        raise Ar2Error(f"{where}{'; '.join(problems)}. Fix: build the index from one encoder's "
                       "output")  # fmt: skip


@cache
def _token_keys(size: int) -> np.ndarray:
    """Seismic's keys of the vocabulary's terms: their ids as text (any token string then
    works, whatever characters it holds), in Seismic's string type. Made once per size:
    building 30k of them per query cost 13 ms a search."""
    strings = require("seismic", extra="sparse").get_seismic_string()
    return np.asarray([str(i) for i in range(size)], dtype=strings)


def _version(module: Any) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyseismic-lsr")
    except PackageNotFoundError:  # installed without its metadata: only the version is lost
        return getattr(module, "__version__", "unknown")


def index_corpus(
    model: Any,
    docs: Sequence[Doc],
    settings: SeismicSettings | None = None,
    batch_size: int = 16,
    precision: str = "auto",
) -> SparseIndex:
    """The inference-free sparse encoder ``model``'s (:mod:`ar2.encoders.sparse`) weights of
    ``docs`` (``title + " " + text``), indexed with its vocabulary, IDFs and tokenizer."""
    from ar2.encoders import sparse as encoder

    texts = [d.full_text(" ") for d in docs]
    weights = encoder.encode_documents(model, texts, batch_size, precision, progress=True)
    return SparseIndex.build(weights, [d.id for d in docs], encoder.vocabulary(model),
                             encoder.query_idf(model), settings,
                             encoder.tokenizer_json(model))  # fmt: skip


_STDOUT_SWAP = threading.Lock()


@contextlib.contextmanager
def _to_stderr() -> Iterator[None]:
    """Seismic's native code prints its progress to file descriptor 1; inside this block that
    descriptor is stderr's, so that stdout carries only a command's results. The swap is the
    whole process's (a lock keeps two from overlapping); a process without descriptor 1 or 2
    runs the block as it is."""
    with _STDOUT_SWAP:
        _flush_stdout()
        saved = _moved_stdout()
        if saved is None:  # no descriptor 1 or 2 (a detached process): nothing to move
            yield
            return
        try:
            yield
        finally:
            _flush_stdout()
            os.dup2(saved, 1)
            os.close(saved)


def _moved_stdout() -> int | None:
    """Point descriptor 1 at stderr; a copy of the old one, or ``None`` where either is
    missing."""
    try:
        saved = os.dup(1)
    except OSError:
        return None
    try:
        os.dup2(2, 1)
    except OSError:
        os.close(saved)
        return None
    return saved


def _flush_stdout() -> None:
    if sys.stdout is not None:  # None where the process started without descriptor 1
        sys.stdout.flush()
