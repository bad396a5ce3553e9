"""FAISS factory strings: the presets, ``auto`` (chosen from the corpus size and a memory
budget), and the check that FAISS can build and train an index before any encoding."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from ar2._optional import require
from ar2.config import IndexConfig
from ar2.errors import Ar2Error


def ivf_lists(n: int) -> int:
    """IVF lists for ``n`` vectors: about ``4 sqrt(n)``, with at least 39 training points per
    list (FAISS's own minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def pq_subquantizers(d: int) -> int:
    """PQ sub-quantizers for dimension ``d``: of 4 dimensions each, the largest count that
    divides ``d``."""
    return next(m for m in range(max(1, d // 4), 0, -1) if d % m == 0)


PRESETS: dict[str, Callable[[int, int], str]] = {
    "flat": lambda n, d: "Flat",
    "ivf": lambda n, d: f"IVF{ivf_lists(n)},Flat",
    "hnsw": lambda n, d: "HNSW32",
    "ivfpq": lambda n, d: f"IVF{ivf_lists(n)},PQ{pq_subquantizers(d)}x8",
}


def _sq8(factory: str) -> str:
    # Flat -> SQ8, IVFn,Flat -> IVFn,SQ8, HNSW32 -> HNSW32,SQ8 (an HNSW graph over SQ8 codes)
    if factory == "Flat":
        return "SQ8"
    return f"{factory},SQ8" if factory.startswith("HNSW") else factory.replace(",Flat", ",SQ8")


QUANTIZERS: dict[str, Callable[[str], str]] = {
    "int8": _sq8,
    "binary": lambda f: "LSH",  # FAISS's LSH with nbits = d, no rotation: the signs
}
"""A preset's factory string made to store codes (``IndexConfig.quantize``).

Example:
    >>> [QUANTIZERS["int8"](PRESETS[p](10_000, 384)) for p in ("flat", "ivf", "hnsw")]
    ['SQ8', 'IVF256,SQ8', 'HNSW32,SQ8']
    >>> QUANTIZERS["int8"]("IVF32,Flat")
    'IVF32,SQ8'
"""


def hamming(factory: str) -> bool:
    """Whether FAISS searches this index by Hamming distance (binary codes): it is built with
    the L2 metric, FAISS's only one for it, and its distances are turned into scores.

    Example:
        >>> hamming("LSH"), hamming("SQ8")
        (True, False)
    """
    return factory.split(",")[-1].startswith("LSH")


EXACT_UP_TO = 300_000
"""``auto`` keeps exact (flat) search up to this many vectors when they fit the budget."""
HNSW_LINK_BYTES = 32 * 2 * 4 * 1.1  # HNSW32: about 2 x 32 int32 links per vector on level 0


def auto_preset(n: int, d: int, ram_budget_bytes: float) -> tuple[str, str]:
    """The preset for ``n`` vectors of dimension ``d`` within a memory budget, and why.

    Exact search while the corpus is small and fits; HNSW (fast, recall near 1, float32
    vectors plus links) while that fits; IVF-PQ (``d / 4`` bytes per vector) beyond.

    Example:
        >>> auto_preset(5_183, 384, 8e9)[0]
        'flat'
        >>> auto_preset(1_000_000, 384, 8e9)[0]
        'hnsw'
        >>> auto_preset(1_000_000, 384, 1e9)[0]
        'ivfpq'
    """
    flat = n * d * 4.0
    hnsw = n * (d * 4.0 + HNSW_LINK_BYTES)
    if n <= EXACT_UP_TO and flat <= ram_budget_bytes:
        return "flat", f"{n} vectors <= {EXACT_UP_TO} and {flat / 1e9:.2f} GB fit the budget"
    if hnsw <= ram_budget_bytes:
        return "hnsw", f"HNSW needs {hnsw / 1e9:.2f} GB <= budget {ram_budget_bytes / 1e9:.2f} GB"
    return "ivfpq", f"HNSW would need {hnsw / 1e9:.2f} GB > budget {ram_budget_bytes / 1e9:.2f} GB"


def ram_budget(config: IndexConfig) -> float:
    """``config.ram_budget_gb`` in bytes, or half the machine's physical memory."""
    if config.ram_budget_gb is not None:
        return config.ram_budget_gb * 1e9
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2


def compresses(factory: str) -> bool:
    """Whether a factory string stores lossy codes instead of the float32 vectors.

    Example:
        >>> compresses("IVF4000,PQ96x8"), compresses("HNSW32"), compresses("IVF256,SQ8")
        (True, False, True)
    """
    return any(code in factory for code in ("PQ", "SQ", "LSH", "RaBitQ"))


def factory_for(config: IndexConfig, n: int, d: int) -> str:
    """The FAISS factory string for ``config`` on ``n`` vectors of dimension ``d``.

    Example:
        >>> factory_for(IndexConfig(preset="ivf"), 10_000, 384)
        'IVF256,Flat'
        >>> factory_for(IndexConfig(factory="HNSW16"), 10, 8)
        'HNSW16'
        >>> factory_for(IndexConfig(preset="auto", ram_budget_gb=1.0), 1_000_000, 384)
        'IVF4000,PQ96x8'
    """
    return choose(config, n, d)[0]


def check_factory(config: IndexConfig, n: int, d: int, metric: str = "ip") -> str:
    """The factory string for ``config`` on ``n`` vectors of dimension ``d``, checked before
    any encoding: FAISS must parse it, and ``n`` must be enough to train it (an IVF index
    needs a vector per list, 8-bit PQ codes 256 per codebook).

    Raises:
        Ar2Error: A string FAISS cannot parse, or too few vectors to train the index.

    Example:
        >>> check_factory(IndexConfig(preset="ivfpq"), 100, 384)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ar2.errors.Ar2Error: index IVF2,PQ96x8 (preset 'ivfpq') needs at least 256 documents...
    """
    faiss = require("faiss")
    factory = factory_for(config, n, d)
    what = f"--factory {factory!r}" if config.factory else f"{factory} (preset {config.preset!r})"
    try:
        index = faiss.index_factory(d, factory, faiss_metric(metric, factory))
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1].split(": ", 1)[-1][:120]
        raise Ar2Error(
            f"index {what}: FAISS cannot build it for {d}-d vectors ({reason}). Fix: give a "
            "valid index_factory string (such as Flat, HNSW32, IVF256,Flat, IVF256,PQ48x8) or "
            "a --preset"
        ) from None
    need = _training_minimum(index)
    if n < need:
        raise Ar2Error(
            f"index {what} needs at least {need} documents to train; the corpus has {n}. "
            "Fix: use preset flat or hnsw, or a factory with fewer lists and smaller codebooks"
        )
    return factory


def _training_minimum(index: Any) -> int:
    """Vectors FAISS needs to train ``index``: one per IVF list, ``2^nbits`` per PQ codebook."""
    faiss = require("faiss")
    if index.is_trained:
        return 0
    parts = [faiss.downcast_index(index)]
    parts += [faiss.downcast_index(getattr(parts[0], a)) for a in ("index", "storage")
              if getattr(parts[0], a, None) is not None]  # fmt: skip
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        parts.append(ivf)
    need = [ivf.nlist if ivf is not None else 1]
    return max(need + [2 ** int(p.pq.nbits) for p in parts if hasattr(p, "pq")])


def faiss_metric(metric: str, factory: str = "") -> int:
    """FAISS's metric for ``metric`` (``ip`` or ``l2``); L2 for a Hamming index."""
    faiss = require("faiss")
    if metric == "ip" and not hamming(factory):
        return faiss.METRIC_INNER_PRODUCT  # type: ignore[no-any-return]
    return faiss.METRIC_L2  # type: ignore[no-any-return]


def choose(config: IndexConfig, n: int, d: int) -> tuple[str, dict[str, Any] | None]:
    """The factory string, and for ``auto`` what it chose and why (for the manifest)."""
    if config.factory:
        return config.factory, None
    preset, auto = config.preset, None
    if preset == "auto":
        budget = ram_budget(config)
        preset, reason = auto_preset(n, d, budget)
        auto = {"preset": preset, "reason": reason, "ram_budget_bytes": budget}
    factory = PRESETS[preset](n, d)  # IndexConfig checked the name
    if config.quantize:  # IndexConfig refused the presets it does not apply to
        factory = QUANTIZERS[config.quantize](factory)
    return factory, auto
