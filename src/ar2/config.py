"""Typed, frozen configuration: one dataclass per concern, loadable from TOML.

Components receive the dataclass they need, never a bag of everything.

Example:
    >>> cfg = EncoderConfig(pooling="cls", normalize=False)
    >>> cfg.doc_max_length
    256
    >>> IndexConfig().preset
    'flat'
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ar2.errors import Ar2Error

PRECISIONS = ("auto", "bf16", "fp32")
POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class EncoderConfig:
    """How a bi-encoder turns text into vectors.

    Attributes:
        pooling: ``"mean"`` (masked mean of the last layer) or ``"cls"`` (first token).
        normalize: L2-normalise vectors (cosine similarity); otherwise raw dot product.
        query_max_length: Token cut-off for queries.
        doc_max_length: Token cut-off for documents (``title + title_sep + text``).
        query_prefix: Text prepended to every query (e.g. ``"query: "``).
        doc_prefix: Text prepended to every document.
        title_sep: Separator between a document's title and its text.
        precision: ``"auto"`` (bf16 autocast where the hardware has it), ``"bf16"``, ``"fp32"``.
        batch_size: Sequences per forward pass, formed from length-sorted inputs (16 is fastest
            on a 2-core CPU; raise it on a GPU).
    """

    pooling: str = "mean"
    normalize: bool = True
    query_max_length: int = 64
    doc_max_length: int = 256
    query_prefix: str = ""
    doc_prefix: str = ""
    title_sep: str = " "
    precision: str = "auto"
    batch_size: int = 16

    def __post_init__(self) -> None:
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class RankerConfig:
    """How a cross-encoder scores ``[CLS] query [SEP] title text [SEP]`` pairs."""

    max_length: int = 256
    title_sep: str = " "
    precision: str = "auto"
    batch_size: int = 32

    def __post_init__(self) -> None:
        _check_choice("precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index to build: a preset name or a raw factory string, and search settings.

    Attributes:
        preset: ``flat``, ``ivf``, ``hnsw`` or ``ivfpq``; ignored when ``factory`` is set.
        factory: A FAISS ``index_factory`` string (e.g. ``"IVF256,Flat"``), overriding ``preset``.
        nprobe: IVF lists visited per query.
        ef_search: HNSW beam width at query time.
    """

    preset: str = "flat"
    factory: str | None = None
    nprobe: int = 32
    ef_search: int = 128


@dataclass(frozen=True)
class BM25Config:
    """bm25s settings: the Lucene BM25 variant with an English Snowball stemmer and stopwords."""

    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stemmer: str | None = "english"
    stopwords: str | None = "en"
    title_sep: str = " "


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys with the valid ones listed.

    Example:
        >>> from_dict(EncoderConfig, {"pooling": "cls"}).pooling
        'cls'
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise Ar2Error(
            f"{source}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(names)}"
        )
    try:
        return cls(**data)
    except (TypeError, ValueError) as err:
        raise Ar2Error(f"{source}: {err}") from err


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning syntax errors into an :class:`Ar2Error` naming the file."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise Ar2Error(f"{path}: invalid TOML ({err}). Fix the syntax at that position.") from err


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(valid)}")
