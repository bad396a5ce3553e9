"""FaissIndex: dense vectors in a FAISS index built from a factory string or a preset."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ar2._io import atomic_dir, atomic_write_json
from ar2._optional import require
from ar2.config import IndexConfig
from ar2.index.base import base_manifest, read_ids, read_manifest, write_docs, write_ids
from ar2.types import Doc, Hit

INDEX_FILE = "index.faiss"
METRICS = ("ip", "l2")


def _nlist(n: int) -> int:
    # about 4 sqrt(n) lists, with at least 39 training points per list (FAISS's own minimum)
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def _pq_m(d: int) -> int:
    # sub-quantizers of 4 dimensions each, the largest count that divides d
    return next(m for m in range(max(1, d // 4), 0, -1) if d % m == 0)


PRESETS: dict[str, Callable[[int, int], str]] = {
    "flat": lambda n, d: "Flat",
    "ivf": lambda n, d: f"IVF{_nlist(n)},Flat",
    "hnsw": lambda n, d: "HNSW32",
    "ivfpq": lambda n, d: f"IVF{_nlist(n)},PQ{_pq_m(d)}x8",
}


def factory_for(config: IndexConfig, n: int, d: int) -> str:
    """The FAISS factory string for ``config`` on ``n`` vectors of dimension ``d``.

    Example:
        >>> factory_for(IndexConfig(preset="ivf"), 10_000, 384)
        'IVF256,Flat'
        >>> factory_for(IndexConfig(factory="HNSW16"), 10, 8)
        'HNSW16'
    """
    if config.factory:
        return config.factory
    if config.preset not in PRESETS:
        raise ValueError(f"unknown index preset {config.preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[config.preset](n, d)


class FaissIndex:
    """A FAISS index plus the string ids of its rows.

    Inner product (``"ip"``) is the metric for both dot-product and cosine encoders (cosine
    vectors are normalised by the encoder); ``"l2"`` is available for L2 models.

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
        self._apply_search_params()

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: Sequence[str],
        config: IndexConfig | None = None,
        metric: str = "ip",
    ) -> FaissIndex:
        """Build (training first if the index type needs it) and fill with ``vectors``."""
        faiss = require("faiss")
        config = config or IndexConfig()
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {list(METRICS)}")
        vectors = _as_float32(vectors)
        factory = factory_for(config, len(vectors), vectors.shape[1])
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        index = faiss.index_factory(vectors.shape[1], factory, faiss_metric)
        if getattr(index, "do_polysemous_training", False):
            # on by default for PQ8 codes, only for polysemous (Hamming) search, which ar2
            # never uses; it costs 10-15 s per build and leaves the search results unchanged
            index.do_polysemous_training = False
        built = cls(index, [], metric, factory, config)
        if not index.is_trained:
            index.train(vectors)
        built.add(vectors, ids)
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
        scores, rows = self.index.search(queries, k)
        if self.metric == "l2":
            scores = -scores  # higher is better everywhere in ar2
        return [
            [Hit(self.ids[r], float(s)) for r, s in zip(row, score) if r >= 0]
            for row, score in zip(rows, scores)
        ]

    def save(
        self, path: str | Path, extra: dict[str, Any] | None = None, docs: Iterable[Doc] = ()
    ) -> None:
        """Save ``index.faiss``, ``ids.txt`` and ``manifest.json`` (plus ``extra``) atomically."""
        faiss = require("faiss")
        with atomic_dir(path) as tmp:
            faiss.write_index(self.index, os.fspath(tmp / INDEX_FILE))
            write_ids(tmp, self.ids)
            write_docs(tmp, docs)
            manifest = base_manifest("dense", len(self.ids)) | {
                "factory": self.factory,
                "metric": self.metric,
                "dim": int(self.index.d),
                "nprobe": self.config.nprobe,
                "ef_search": self.config.ef_search,
                "index_config": self.config.__dict__,
            }
            atomic_write_json(tmp / "manifest.json", manifest | (extra or {}))

    @classmethod
    def load(cls, path: str | Path) -> FaissIndex:
        """Load a folder written by :meth:`save`."""
        faiss = require("faiss")
        path = Path(path)
        manifest = read_manifest(path, kind="dense")
        index = faiss.read_index(os.fspath(path / INDEX_FILE))
        config = IndexConfig(**manifest["index_config"])
        return cls(index, read_ids(path), manifest["metric"], manifest["factory"], config)

    def _apply_search_params(self) -> None:
        faiss = require("faiss")
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            ivf.nprobe = self.config.nprobe
        if hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = self.config.ef_search


def _as_float32(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {vectors.shape}")
    return vectors
