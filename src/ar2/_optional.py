"""Lazy imports of heavy, optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

_EXTRA_OF = {
    "torch": "train",
    "transformers": "train",
    "sentence_transformers": "train",
    "faiss": "faiss",
    "bm25s": "bm25",
    "Stemmer": "bm25",
    "ir_measures": "eval",
    "scipy": "eval",
    "statsmodels": "eval",
    "matplotlib": "eval",
    "fastapi": "serve",
    "uvicorn": "serve",
    "onnxruntime": "onnx",
    "onnx": "onnx",
    "seismic": "sparse",
    "pymilvus": "milvus",
}


def require(module: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise an ``ImportError`` that says which pip extra provides it.

    Example:
        >>> require("json").__name__
        'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        extra = extra or _EXTRA_OF.get(module.split(".")[0], "all")
        raise ImportError(
            f"{module!r} is needed for this feature but is not installed. "
            f"Install it with: pip install 'ar2[{extra}]'"
        ) from err
