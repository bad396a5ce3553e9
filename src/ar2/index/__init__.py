"""Indexes with the same four verbs: ``build``/``add``, ``search``, ``save``, ``load``."""

from ar2.index.base import Index, load_index, read_manifest
from ar2.index.bm25 import BM25Index
from ar2.index.dense import FaissIndex
from ar2.index.factory import PRESETS, factory_for

__all__ = [
    "PRESETS",
    "BM25Index",
    "FaissIndex",
    "Index",
    "factory_for",
    "load_index",
    "read_manifest",
]
