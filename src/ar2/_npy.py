"""Float32 ``.npy`` files read and written a chunk at a time through short-lived maps.

The pages a memory map has touched count in the process's resident memory for as long as the
map is open: a map held while a whole file is read or written shows as much memory as reading
it into an array (measured: ``docs/benchmarks.md``). Writing and bulk reading here map the file,
touch only the rows asked for, and unmap it again. Repeated small reads (a search's candidate
vectors) may keep their maps open: ``NpyParts.read(rows, keep_mapped=True)``.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> create(folder / "a.npy", (2, 3)); write_rows(folder / "a.npy", 1, np.ones((1, 3)))
    >>> create(folder / "b.npy", (1, 3))
    >>> parts = NpyParts([folder / "a.npy", folder / "b.npy"])
    >>> parts.shape, parts.read(slice(1, 3)).tolist()
    ((3, 3), [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

Paths = str | Path | Sequence[str | Path]


def create(path: str | Path, shape: tuple[int, int]) -> None:
    """A float32 ``.npy`` file of ``shape`` (zeros), for :func:`write_rows` to fill."""
    mapped = np.lib.format.open_memmap(path, "w+", np.float32, shape)
    del mapped


def write_rows(path: str | Path, start: int, rows: np.ndarray) -> None:
    """Write ``rows`` into the ``.npy`` file from row ``start``."""
    mapped = np.load(path, mmap_mode="r+")
    mapped[start : start + len(rows)] = rows
    mapped.flush()
    del mapped


class NpyParts:
    """Several 2-d ``.npy`` files read as one array, their rows concatenated in order (the
    shards that several processes wrote)."""

    def __init__(self, paths: Paths) -> None:
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        shapes = [np.load(p, mmap_mode="r").shape for p in self.paths]
        for path, shape in zip(self.paths, shapes):
            if len(shape) != 2 or shape[1:] != shapes[0][1:]:
                raise ValueError(
                    f"{path}: expected 2-d vectors like {shapes[0]}, got shape {shape}. "
                    "Fix: pass the .npy files of one encoder's vectors"
                )
        self.starts = np.cumsum([0] + [s[0] for s in shapes])
        self.shape = (int(self.starts[-1]), shapes[0][1] if shapes else 0)
        self._maps: list[np.ndarray] | None = None

    def read(self, rows: slice | np.ndarray, keep_mapped: bool = False) -> np.ndarray:
        """The rows ``rows`` (a slice with step 1, or increasing row numbers) as float32.

        Each call maps and unmaps the files, unless ``keep_mapped``: then the maps stay open
        for the next calls (repeated small reads, as searches make, skip the page faults of a
        fresh map; the pages are the shared page cache's, which the kernel can reclaim)."""
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(self.shape[0]))
        if keep_mapped and self._maps is None:
            self._maps = [np.load(p, mmap_mode="r") for p in self.paths]
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        for i, path in enumerate(self.paths):
            lo, hi = self.starts[i], self.starts[i + 1]
            take = (rows >= lo) & (rows < hi)
            if take.any():
                mapped = self._maps[i] if keep_mapped and self._maps else None
                out[take] = _read(path, rows[take] - lo, mapped)
        return out

    def copy_to(self, path: str | Path, chunk: int = 65_536) -> None:
        """Write the concatenation to one ``.npy`` file, a chunk at a time."""
        create(path, self.shape)
        for start in range(0, self.shape[0], chunk):
            write_rows(path, start, self.read(slice(start, start + chunk)))


def _read(path: Path, rows: np.ndarray, mapped: np.ndarray | None = None) -> Any:
    """Rows of one file, through ``mapped`` (left open) or a map of its own (closed after)."""
    array = np.load(path, mmap_mode="r") if mapped is None else mapped
    try:
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1:  # a run: one slice
            return np.array(array[rows[0] : rows[-1] + 1], dtype=np.float32)
        return np.array(array[rows], dtype=np.float32)
    finally:
        del array
