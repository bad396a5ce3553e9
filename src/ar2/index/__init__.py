"""Indexes with the same four verbs: ``build``/``add``, ``search``, ``save``, ``load``."""

from pathlib import Path
from typing import Any

from ar2.config import STORES
from ar2.errors import Ar2Error
from ar2.index.base import Index, read_manifest
from ar2.index.bm25 import BM25Index
from ar2.index.dense import FaissIndex
from ar2.index.factory import PRESETS, factory_for
from ar2.index.sparse import SparseIndex

KINDS: dict[str, Any] = {"bm25": BM25Index, "dense": FaissIndex, "sparse": SparseIndex}
"""Index classes by the ``kind`` their manifests record."""


def store_of(manifest: dict[str, Any]) -> str:
    """The store a dense index's manifest names (``faiss`` when it names none).

    Example:
        >>> store_of({"kind": "dense"}), store_of({"store": {"kind": "milvus"}})
        ('faiss', 'milvus')
    """
    return str(manifest.get("store", {}).get("kind", "faiss"))


def load_dense(path: str | Path) -> Any:
    """A dense index folder's index: a :class:`FaissIndex`, or a ``MilvusIndex`` where its
    manifest names a Milvus collection."""
    if store_of(read_manifest(path, kind="dense")) == "milvus":
        from ar2.index.milvus import MilvusIndex

        return MilvusIndex.load(path)
    return FaissIndex.load(path)


def load_index(path: str | Path) -> Any:
    """Load any ar2 index folder, choosing the class from its manifest's ``kind`` (and a
    dense index's store)."""
    kind = read_manifest(path).get("kind")
    if kind not in KINDS:
        raise Ar2Error(
            f"{path}: unknown index kind {kind!r}. Fix: rebuild it with `ar2 index` "
            f"(kinds: {', '.join(KINDS)})"
        )
    return load_dense(path) if kind == "dense" else KINDS[kind].load(path)


__all__ = [
    "KINDS",
    "PRESETS",
    "STORES",
    "BM25Index",
    "FaissIndex",
    "Index",
    "SparseIndex",
    "factory_for",
    "load_dense",
    "load_index",
    "read_manifest",
    "store_of",
]
