"""FaissIndex: dense vectors in a FAISS index built from a factory string or a preset."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ar2 import _npy
from ar2._io import atomic_dir, atomic_write_json
from ar2._optional import require
from ar2.config import IndexConfig
from ar2.errors import Ar2Error
from ar2.index.base import base_manifest, read_ids, read_manifest, write_docs, write_ids
from ar2.index.factory import choose, compresses, faiss_metric, hamming
from ar2.types import Doc, Hit

if TYPE_CHECKING:
    from ar2.encoders import BiEncoder
    from ar2.index.milvus import MilvusTarget

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
VECTORS_FILE = "vectors.npy"  # float32 vectors beside a compressed index, for exact refining
ADD_CHUNK = 65_536  # vectors added at a time
TRAIN_SAMPLE = 256 * 1024  # vectors an IVF / PQ index is trained on, at most
REFINE_FLOATS = 8 * 1024 * 1024  # candidate vector floats read at a time when refining
METRICS = ("ip", "l2")


class FaissIndex:
    """A FAISS index plus the string ids of its rows.

    Inner product (``"ip"``) is the metric for both dot-product and cosine encoders (cosine
    vectors are normalised by the encoder); ``"l2"`` is available for L2 models.

    A compressed index (IVF-PQ, SQ: :func:`compresses`) keeps the float32 vectors beside it on
    disk (``vectors.npy``) and re-scores its top ``k x config.refine`` candidates exactly
    from them, reading only those rows (FAISS's ``IndexRefineFlat`` would hold every vector in
    memory, which is what a compressed index is chosen to avoid).

    Example:
        >>> import numpy as np
        >>> vecs = np.eye(3, dtype=np.float32)
        >>> index = FaissIndex.build(vecs, ["a", "b", "c"])
        >>> index.search(vecs[1:2], k=1)
        [[Hit(doc_id='b', score=1.0)]]
    """

    def __init__(self, index: Any, ids: list[str], metric: str, factory: str, config: IndexConfig):
        self.index, self.ids, self.metric, self.factory = index, ids, metric, factory
        self.config = config
        self.auto: dict[str, Any] | None = None  # what preset "auto" chose, and why
        self.vectors: np.ndarray | _npy.NpyParts | None = None  # exact vectors, to refine
        self._apply_search_params()

    @property
    def dim(self) -> int:
        """The dimension of the vectors."""
        return int(self.index.d)

    @property
    def refines(self) -> bool:
        """Whether searches re-score candidates exactly (a compressed index with vectors)."""
        return self.vectors is not None and self.config.refine > 0 and compresses(self.factory)

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: Sequence[str],
        config: IndexConfig | None = None,
        metric: str = "ip",
    ) -> FaissIndex:
        """Build (training first if the index type needs it) and fill with ``vectors``."""
        if vectors.ndim != 2:
            raise ValueError(f"expected a 2-d array of vectors, got shape {vectors.shape}")
        return cls._build(vectors, ids, config, metric)

    @classmethod
    def build_from_npy(
        cls,
        paths: _npy.Paths,
        ids: Sequence[str],
        config: IndexConfig | None = None,
        metric: str = "ip",
    ) -> FaissIndex:
        """:meth:`build` from float32 ``.npy`` files (as ``BiEncoder.encode_docs_to`` writes;
        several files are read as one, their rows in order), a chunk at a time: each chunk is
        mapped, copied and unmapped, so memory holds the index and one chunk, not the files'
        pages too."""
        return cls._build(_npy.NpyParts(paths), ids, config, metric)

    @classmethod
    def _build(
        cls,
        source: np.ndarray | _npy.NpyParts,
        ids: Sequence[str],
        config: IndexConfig | None,
        metric: str,
    ) -> FaissIndex:
        """Train on a sample of ``source``'s rows, then add ``ADD_CHUNK`` rows at a time; a
        compressed index keeps ``source`` (a reference, not a copy) to refine with."""
        faiss = require("faiss")
        config = config or IndexConfig()
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {list(METRICS)}")
        n, d = source.shape
        if n != len(ids):
            raise ValueError(f"{n} vectors but {len(ids)} ids")
        factory, auto = choose(config, n, d)
        index = faiss.index_factory(d, factory, faiss_metric(metric, factory))
        if getattr(index, "do_polysemous_training", False):
            # on by default for PQ8 codes, only for polysemous (Hamming) search, which ar2
            # never uses; it costs 10-15 s per build and leaves the search results unchanged
            index.do_polysemous_training = False
        if hasattr(index, "hnsw"):
            index.hnsw.efConstruction = config.ef_construction
        built = cls(index, [], metric, factory, config)
        built.auto = auto
        if compresses(factory):
            built.vectors = source
        if not index.is_trained:
            index.train(_as_float32(_rows(source, training_rows(n))))
        for start in range(0, n, ADD_CHUNK):
            rows = _rows(source, slice(start, start + ADD_CHUNK))
            built.add(rows, ids[start : start + ADD_CHUNK])
        return built

    def add(self, vectors: np.ndarray, ids: Sequence[str]) -> None:
        """Append vectors with their ids."""
        if len(vectors) != len(ids):
            raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
        self.index.add(_as_float32(vectors))
        self.ids.extend(ids)

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` hits for each query vector, best first."""
        queries = _as_float32(queries)
        k = min(k, len(self.ids))
        if k <= 0:  # FAISS asserts on k = 0 (an empty index or k = 0): no hits, like BM25Index
            return [[] for _ in queries]
        if self.refines:
            scores, rows = self._refine(queries, k)
        else:
            scores, rows = self.index.search(queries, k)
            if self.metric == "l2" or hamming(self.factory):
                scores = -scores  # higher is better everywhere in ar2
        return [
            [Hit(self.ids[r], float(s)) for r, s in zip(row, score) if r >= 0]
            for row, score in zip(rows, scores)
        ]

    def _refine(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k x refine`` candidates from the codes, re-scored with exact vectors."""
        depth = min(k * self.config.refine, len(self.ids))
        _, candidates = self.index.search(queries, depth)  # (q, c), -1 where none
        block = max(1, min(256, REFINE_FLOATS // max(1, depth * queries.shape[1])))
        scores, rows = [], []
        for start in range(0, len(queries), block):
            s, r = self._rescore(
                queries[start : start + block], candidates[start : start + block], k
            )
            scores.append(s)
            rows.append(r)
        if not scores:
            return np.zeros((0, k), dtype=np.float32), np.zeros((0, k), dtype=np.int64)
        return np.concatenate(scores), np.concatenate(rows)

    def _rescore(
        self, queries: np.ndarray, found: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of each query's candidates ``found`` (b, c), best ``k`` first."""
        unique = np.unique(found[found >= 0])  # (u,) increasing: one read, in file order
        if not unique.size:
            return np.full((len(found), k), -np.inf, np.float32), np.full((len(found), k), -1)
        vectors = _rows(self.vectors, unique, keep_mapped=True)  # (u, dim)
        at = np.minimum(np.searchsorted(unique, found), len(unique) - 1)  # (b, c)
        candidates = vectors[at]  # (b, c, dim): each query's own
        if self.metric == "ip":
            exact = np.einsum("bcd,bd->bc", candidates, queries)  # (b, c)
        else:  # -||v - q||^2, squared as FAISS's, from the difference (no cancellation)
            candidates -= queries[:, None, :]
            exact = -np.einsum("bcd,bcd->bc", candidates, candidates)  # (b, c)
        exact[found < 0] = -np.inf
        top = np.argsort(-exact, axis=1, kind="stable")[:, :k]  # (b, k)
        best = np.take_along_axis(exact, top, axis=1)  # (b, k)
        return best, np.where(np.isfinite(best), np.take_along_axis(found, top, axis=1), -1)

    def save(
        self,
        path: str | Path,
        extra: dict[str, Any] | None = None,
        docs: Iterable[Doc] = (),
        overwrite: bool = False,
    ) -> None:
        """Save ``index.faiss``, ``ids.txt`` and ``manifest.json`` (plus ``extra``) atomically;
        a folder ar2 did not write is replaced only with ``overwrite``."""
        faiss = require("faiss")
        with atomic_dir(path, overwrite) as tmp:
            faiss.write_index(self.index, os.fspath(tmp / INDEX_FILE))
            write_ids(tmp, self.ids)
            write_docs(tmp, docs)
            if self.refines:
                self._save_vectors(tmp / VECTORS_FILE)
            manifest = base_manifest("dense", len(self.ids)) | {
                "factory": self.factory,
                "metric": self.metric,
                "dim": int(self.index.d),
                "nprobe": self.config.nprobe,
                "ef_search": self.config.ef_search,
                "index_config": self.config.__dict__,
                "refine": self.config.refine if self.refines else 0,
            }
            if self.auto:
                manifest["auto_preset"] = self.auto
            atomic_write_json(tmp / "manifest.json", manifest | (extra or {}))

    @classmethod
    def load(cls, path: str | Path, mmap: bool = False) -> FaissIndex:
        """Load a folder written by :meth:`save`. With ``mmap`` the index's vectors are mapped
        from the file rather than read (``IO_FLAG_MMAP_IFC``): processes on one machine that
        load the same index share one copy in the page cache."""
        faiss = require("faiss")
        path = Path(path)
        manifest = read_manifest(path, kind="dense")
        flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) if mmap else 0  # older FAISS: read
        try:
            index = faiss.read_index(os.fspath(path / INDEX_FILE), flags)
        except RuntimeError as err:
            reason = str(err).strip().splitlines()[-1].split("failed: ")[-1][:160]
            raise Ar2Error(
                f"{path / INDEX_FILE}: cannot read the FAISS index ({reason}). "
                "Fix: rebuild the index with `ar2 index`"
            ) from None
        config = IndexConfig(**manifest["index_config"])
        loaded = cls(index, read_ids(path), manifest["metric"], manifest["factory"], config)
        if (path / VECTORS_FILE).is_file():
            loaded.vectors = _npy.NpyParts(path / VECTORS_FILE)
        elif compresses(loaded.factory) and config.refine:
            log.warning(
                "%s: no %s (built before ar2 kept them), so its %s codes are searched without "
                "exact re-scoring. Fix: rebuild it for the better recall",
                path, VECTORS_FILE, loaded.factory,
            )  # fmt: skip
        return loaded

    def _save_vectors(self, path: Path) -> None:
        if isinstance(self.vectors, _npy.NpyParts):
            self.vectors.copy_to(path)
        else:
            np.save(path, np.asarray(self.vectors, dtype=np.float32))

    def _apply_search_params(self) -> None:
        faiss = require("faiss")
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            ivf.nprobe = self.config.nprobe
        if hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = self.config.ef_search


def index_corpus(
    encoder: BiEncoder,
    docs: Callable[[], Iterable[Doc]],
    ids: Sequence[str],
    path: str | Path,
    config: IndexConfig | None = None,
    extra: dict[str, Any] | None = None,
    store_docs: bool = False,
    overwrite: bool = False,
    milvus: MilvusTarget | None = None,
) -> None:
    """Encode the documents ``docs()`` yields (``ids`` are theirs, in order) into a dense index
    saved at ``path`` (with the documents when ``store_docs``: ``docs()`` is read again; a
    folder ar2 did not write is replaced only with ``overwrite``). With ``milvus`` the vectors
    and the documents go to that Milvus collection, and ``path`` gets the manifest that
    names it (:class:`ar2.index.milvus.MilvusIndex`).

    Memory holds neither all the texts nor all the vectors: they are encoded to a temporary
    ``.npy`` file a chunk at a time and indexed from it a chunk at a time. Load the result
    with :func:`ar2.index.load_vectors`.
    """
    import shutil

    from ar2._io import make_temp_dir
    from ar2._outdir import check_replaceable

    path = Path(path).resolve()
    if not overwrite:
        check_replaceable(path)  # before the encoding, not after
    path.parent.mkdir(parents=True, exist_ok=True)
    work = make_temp_dir(path)  # a killed run's is removed by the next (ar2._outdir)
    try:
        vectors = work / "vectors.npy"
        encoder.encode_docs_to(vectors, docs(), len(ids), progress=True)
        extra = (extra or {}) | {"encoder": encoder.describe(), "truncation": encoder.truncation()}
        if milvus is not None:
            parts = _npy.NpyParts(vectors)
            n, dim = parts.shape
            chunks = ((parts.read(slice(s, s + ADD_CHUNK)), list(ids[s : s + ADD_CHUNK]))
                      for s in range(0, n, ADD_CHUNK))  # fmt: skip
            to_milvus(chunks, n, dim, milvus, config, extra, docs() if store_docs else (),
                      path, overwrite)  # fmt: skip
            return
        index = FaissIndex.build_from_npy(vectors, ids, config)
        index.save(path, extra, docs() if store_docs else (), overwrite)  # before vectors go
    finally:
        shutil.rmtree(work, ignore_errors=True)


def to_milvus(
    chunks: Iterator[tuple[np.ndarray, list[str]]], n: int, dim: int, target: MilvusTarget,
    config: IndexConfig | None, extra: dict[str, Any], docs: Iterable[Doc], path: str | Path,
    overwrite: bool = False,
) -> None:  # fmt: skip
    """``(vectors, ids)`` chunks (``n`` rows of ``dim`` in all) and their ``docs`` into a
    Milvus collection, named by the index folder ``path`` (a local store without a URI is
    made inside the folder, as it is written)."""
    from ar2.index.milvus import LOCAL_STORE, MilvusIndex

    with atomic_dir(path, overwrite) as tmp:
        uri = target.uri or str(tmp / LOCAL_STORE)
        index = MilvusIndex.build_from(chunks, n, dim, uri, target.collection, config,
                                       docs=docs, extra=extra)  # fmt: skip
        try:
            index.describe(tmp)
        finally:
            index.close()


def export(
    source: str | Path, path: str | Path, target: MilvusTarget, config: IndexConfig | None = None,
    overwrite: bool = False,
) -> int:  # fmt: skip
    """A FAISS index folder's vectors and documents into a Milvus collection, named by the
    index folder ``path`` (:func:`to_milvus`); its manifest keeps the source's encoder and
    records where it came from. Returns how many documents."""
    from ar2.index.base import iter_docs

    source = Path(source)
    index = FaissIndex.load(source)
    manifest = read_manifest(source, kind="dense")
    n, rows = len(index.ids), _stored_vectors(index, source)
    chunks = ((rows(slice(s, s + ADD_CHUNK)), index.ids[s : s + ADD_CHUNK])
              for s in range(0, n, ADD_CHUNK))  # fmt: skip
    kept = {k: manifest[k] for k in ("encoder", "truncation", "data") if k in manifest}
    extra = kept | {"exported_from": {"path": str(source.resolve()), "manifest": manifest}}
    to_milvus(chunks, n, index.dim, target, config, extra, iter_docs(source), path, overwrite)
    return n


def _stored_vectors(index: FaissIndex, source: Path) -> Callable[[slice], np.ndarray]:
    """Rows of the index's float32 vectors: the copy kept beside codes, or the index's own
    (a flat or HNSW index reconstructs them exactly); codes alone are refused."""
    if index.vectors is not None:
        return lambda rows: _rows(index.vectors, rows)
    if compresses(index.factory) or not index.factory.split(",")[-1].startswith(("Flat", "HNSW")):
        raise Ar2Error(
            f"{source}: a {index.factory} index keeps codes, not the vectors. Fix: encode the "
            "corpus again, `ar2 index DATA --kind dense --model ENCODER --store milvus`"
        )
    ivf = require("faiss").try_extract_index_ivf(index.index)
    if ivf is not None:
        ivf.make_direct_map()  # IVF reconstructs a row by id through its direct map
    return lambda rows: index.index.reconstruct_n(rows.start, min(rows.stop, len(index.ids))
                                                  - rows.start)  # fmt: skip


def _rows(source: Any, rows: slice | np.ndarray, keep_mapped: bool = False) -> np.ndarray:
    """Rows of an array or of ``.npy`` parts (``keep_mapped``: see :meth:`NpyParts.read`)."""
    if isinstance(source, _npy.NpyParts):
        return source.read(rows, keep_mapped)
    return np.asarray(source[rows], dtype=np.float32)


def training_rows(n: int) -> Any:
    """All rows, or ``TRAIN_SAMPLE`` evenly spaced ones (FAISS wants 39-256 per centroid)."""
    if n <= TRAIN_SAMPLE:
        return slice(0, n)
    return np.linspace(0, n - 1, TRAIN_SAMPLE).astype(np.int64)


def _as_float32(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {vectors.shape}")
    return vectors
