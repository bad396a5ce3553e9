"""Device and precision selection, and length-sorted batching shared by both encoders."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ar2._optional import require


@cache
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matmuls (AVX512-BF16 or AMX), read from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@cache
def cpu_has_amx() -> bool:
    """True when the CPU has AMX bf16 tiles (Intel Sapphire Rapids and later), read from
    /proc/cpuinfo."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def pick_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    torch = require("torch")
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """``model`` in eval mode while the block runs (inference never uses dropout, even in the
    middle of training); its mode is restored afterwards, whatever happens."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def use_bf16(precision: str, device: str) -> bool:
    """Resolve a precision setting (``auto`` / ``bf16`` / ``fp32``) for ``device``.

    ``AR2_PRECISION=fp32`` in the environment turns ``auto`` into fp32 everywhere (bit-level
    comparisons across batch shapes, as in the data-parallel tests: bf16 round-off depends on
    the padding of a batch).
    """
    if precision == "fp32" or (precision == "auto" and os.environ.get("AR2_PRECISION") == "fp32"):
        return False
    if precision == "bf16":
        return True
    if device.startswith("cuda"):
        return bool(require("torch").cuda.is_bf16_supported())
    return cpu_has_bf16()


def autocast(device: str, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``bf16`` is set, a no-op context otherwise."""
    torch = require("torch")
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


def chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """``items`` in lists of ``size`` (the last shorter), read lazily.

    Example:
        >>> list(chunks(iter("abcde"), 2))
        [['a', 'b'], ['c', 'd'], ['e']]
    """
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Yield index batches of inputs sorted by descending length (less padding per batch).

    Example:
        >>> [b.tolist() for b in length_sorted_batches([3, 9, 5, 1], 2)]
        [[1, 2], [0, 3]]
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def pad_arrays(
    ids: Sequence[Sequence[int]], pad_id: int, type_ids: Sequence[Sequence[int]] | None = None
) -> dict[str, np.ndarray]:
    """Right-pad token id lists into int64 ``input_ids``, ``attention_mask`` (and
    ``token_type_ids``) arrays of shape ``(batch, width)``.

    Example:
        >>> pad_arrays([[5, 6], [7]], 0)["attention_mask"].tolist()
        [[1, 1], [1, 0]]
    """
    width = max(len(x) for x in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)  # (batch, width)
    mask = np.zeros((len(ids), width), dtype=np.int64)  # (batch, width)
    types = np.zeros((len(ids), width), dtype=np.int64)  # (batch, width)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
        if type_ids is not None:
            types[row, : len(seq)] = type_ids[row]
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if type_ids is not None:
        batch["token_type_ids"] = types
    return batch
