"""Atomic writes: a file or folder appears whole or not at all (temp + rename).

Temporary files and folders are named ``.<name>.ar2-<8 random characters>.tmp`` beside their
target (:data:`TEMP_NAME`), and a folder being replaced is moved aside to ``.<name>.ar2-old``
(:data:`OLD_NAME`), so that what a killed writer left can be recognised as ar2's, and only
ar2's, and removed (:func:`ar2._outdir.remove_leftovers`). What is written follows the umask,
as files written with ``open`` do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_NAME = re.compile(r"\.(?P<name>.+)\.ar2-[a-z0-9_]{8}\.tmp")
"""The name of a temporary file or folder (``tempfile``'s 8 random characters)."""
OLD_NAME = re.compile(r"\.(?P<name>.+)\.ar2-old")
"""The name of a folder moved aside while :func:`atomic_dir` replaces it."""


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temp file in the same folder, then rename.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write_text(p, "hi"); p.read_text()
        'hi'
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync, then rename."""
    atomic_write_chunks(path, [data])


def atomic_write_lines(path: str | Path, lines: Iterable[str]) -> int:
    """Write a stream of lines (UTF-8, each followed by a newline) atomically, one at a time
    (memory holds one line); returns how many were written.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write_lines(p, iter(["x", "y"])), p.read_text()
        (2, 'x\\ny\\n')
    """
    count = 0

    def chunks() -> Iterator[bytes]:
        nonlocal count
        for line in lines:
            count += 1
            yield f"{line}\n".encode()

    atomic_write_chunks(path, chunks())
    return count


def atomic_write_chunks(path: str | Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to ``path`` through a temp file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.ar2-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None:  # a full disk names no file: name the one being written
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_npy(path: str | Path, array: Any) -> None:
    """Write a numpy array as ``.npy`` (no pickles), atomically.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.npy"
        >>> atomic_write_npy(path, np.arange(3)); np.load(path).tolist()
        [0, 1, 2]
    """
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


@contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it replaces ``path`` in one rename.

    An existing ``path`` is moved aside first and removed after the swap, so a crash leaves
    either the old folder or the new one, never a half-written one. Only an empty folder or
    one that ar2 wrote (:func:`ar2._outdir.check_replaceable`) is replaced, unless
    ``overwrite``: anything else raises :class:`~ar2.errors.Ar2Error` before any writing.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "out"
        >>> p.mkdir(); _ = (p / "thesis.tex").write_text("precious")
        >>> with atomic_dir(p) as tmp:
        ...     pass
        Traceback (most recent call last):
        ar2.errors.Ar2Error: ...out: holds files that ar2 did not write (thesis.tex). Fix: ...
    """
    from ar2._outdir import check_replaceable

    path = Path(path)
    if not overwrite:
        check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.ar2-old")
    if path.exists() or path.is_symlink():
        remove_path(old)
        os.replace(path, old)
    os.replace(tmp, path)
    remove_path(old)


def make_temp_dir(path: Path) -> Path:
    """A new temporary folder beside ``path`` (named by :data:`TEMP_NAME`), umask applied."""
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.ar2-", suffix=".tmp"))
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes 0700
    return tmp


def remove_path(path: Path) -> None:
    """Remove a file, a link or a folder with its contents; nothing if it is missing."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def umask() -> int:
    """The process's umask, read without changing it (``/proc``), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
