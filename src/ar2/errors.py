"""Errors that users see: each names the file, the line and the fix."""

from __future__ import annotations

import errno
import warnings
from pathlib import Path


class Ar2Error(Exception):
    """Base class of errors the CLI reports without a traceback."""


class StoreUnavailable(Ar2Error):
    """A vector store (a Milvus server) did not answer; a service replies 503 with
    Retry-After, and the request may be retried."""


class DataError(Ar2Error, ValueError):
    """A defect in an input file.

    Example:
        >>> str(DataError("corpus.jsonl", 3, 'missing "_id"', 'give every line an "_id" field'))
        'corpus.jsonl:3: missing "_id". Fix: give every line an "_id" field.'
    """

    def __init__(self, path: str | Path, line: int | None, problem: str, fix: str) -> None:
        self.path, self.line, self.problem, self.fix = str(path), line, problem, fix
        super().__init__(f"{_where(path, line)}: {problem}. Fix: {fix}.")


class DataWarning(UserWarning):
    """A harmless defect in an input file (for example an empty document)."""


def warn_data(
    path: str | Path, line: int | None, problem: str, fix: str, stacklevel: int = 3
) -> None:
    """Emit a :class:`DataWarning` in the same ``file:line: problem. Fix: ...`` shape."""
    message = f"{_where(path, line)}: {problem}. Fix: {fix}."
    warnings.warn(message, DataWarning, stacklevel=stacklevel)


def _where(path: str | Path, line: int | None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


_OS_FIXES = {
    errno.ENOSPC: "free disk space, or write to another disk",
    errno.EDQUOT: "free disk space, or write to another disk",
    errno.EACCES: "check the permissions of that file or folder",
    errno.EPERM: "check the permissions of that file or folder",
    errno.EROFS: "write to a writable file system",
}


def os_error_message(err: OSError) -> str:
    """``<file>: <problem>. Fix: <fix>`` for an error of the operating system.

    Example:
        >>> os_error_message(OSError(errno.ENOSPC, "No space left on device", "out/a.txt"))
        'out/a.txt: No space left on device. Fix: free disk space, or write to another disk'
    """
    where = err.filename if err.filename is not None else "ar2"
    fix = _OS_FIXES.get(err.errno or 0, "check the path, the permissions and the free space")
    return f"{where}: {err.strerror or err}. Fix: {fix}"
