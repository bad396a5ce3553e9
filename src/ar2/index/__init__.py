"""Indexes with the same four verbs: ``build``/``add``, ``search``, ``save``, ``load``."""

from pathlib import Path
from typing import Any

from ar2.errors import Ar2Error
from ar2.index.base import Index, read_manifest
from ar2.index.bm25 import BM25Index
from ar2.index.dense import FaissIndex
from ar2.index.factory import PRESETS, factory_for
from ar2.index.sparse import SparseIndex

KINDS: dict[str, Any] = {"bm25": BM25Index, "dense": FaissIndex, "sparse": SparseIndex}
"""Index classes by the ``kind`` their manifests record."""


def load_index(path: str | Path) -> Any:
    """Load any ar2 index folder, choosing the class from its manifest's ``kind``."""
    kind = read_manifest(path).get("kind")
    if kind not in KINDS:
        raise Ar2Error(
            f"{path}: unknown index kind {kind!r}. Fix: rebuild it with `ar2 index` "
            f"(kinds: {', '.join(KINDS)})"
        )
    return KINDS[kind].load(path)


__all__ = [
    "KINDS",
    "PRESETS",
    "BM25Index",
    "FaissIndex",
    "Index",
    "SparseIndex",
    "factory_for",
    "load_index",
    "read_manifest",
]
