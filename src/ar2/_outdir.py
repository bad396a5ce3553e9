"""Output folders (``--out``): what ar2 may replace, one writer at a time, no leftovers.

Every command that writes a folder goes through :func:`claim`, before any expensive work:

- ``--out`` may not be, hold or lie inside one of the command's inputs;
- a folder that exists must be empty or an ar2 output of the same kind (:data:`KINDS`),
  unless the user passes ``--overwrite``;
- its parent must be writable (checked by writing, not guessed from permission bits);
- a lock beside it (``.<name>.lock``) keeps a second writer out while the first runs;
- temporary files and folders that a killed writer left (:data:`ar2._io.TEMP_NAME`) are
  removed, under the lock, so they are never another writer's.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> data = root / "data"; data.mkdir()
    >>> with claim(root / "idx", "index", inputs=[data]) as out:
    ...     out.name
    'idx'
    >>> with claim(data / "idx", "index", inputs=[data]):
    ...     pass
    Traceback (most recent call last):
    ar2.errors.Ar2Error: ...idx: --out lies inside the input folder .../data. Fix: ...
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ar2._io import TEMP_NAME, remove_path
from ar2.errors import Ar2Error

EVAL_FILES = frozenset(
    {"report.md", "report.json", "report.png", "per_query.tsv", "protocol.json", "runs"}
)
"""What ``ar2 eval`` writes (a folder of these alone, from before eval kept a manifest, is
an eval folder too)."""


def _manifest_kind(path: Path) -> str | None:
    try:
        kind = json.loads((path / "manifest.json").read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


INDEX_FILES = frozenset(
    {"manifest.json", "ids.txt", "corpus.jsonl", "bm25s", "index.faiss", "vectors.npy"}
)
"""What an index folder holds: one that holds anything else is not replaced whole."""


def _is_index(path: Path) -> bool:
    names = {p.name for p in path.iterdir() if not TEMP_NAME.fullmatch(p.name)}
    return _manifest_kind(path) in ("bm25", "dense") and names <= INDEX_FILES


def _is_eval(path: Path) -> bool:
    if _manifest_kind(path) == "eval":
        return True
    names = {p.name for p in path.iterdir()}
    return "report.json" in names and names <= EVAL_FILES


def _is_run(path: Path) -> bool:
    """A run's ``config.json`` is an AR2Config (a model folder's is a model config); a
    damaged one still marks a run (reading it then says what is wrong)."""
    file = path / "config.json"
    if not file.is_file():
        return False
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    return isinstance(config, dict) and {"g0", "rounds", "seed"} <= set(config)


KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "index": ("an ar2 index (`ar2 index`)", _is_index),
    "eval": ("an ar2 eval report (`ar2 eval`)", _is_eval),
    "run": ("an ar2 training run (`ar2 train`)", _is_run),
}
"""Output kinds: a description and a test that a folder is one."""


def is_kind(path: Path, kind: str) -> bool:
    """Whether ``path`` is a folder that ar2 wrote as an output of ``kind`` (:data:`KINDS`)."""
    return path.is_dir() and KINDS[kind][1](path)


def check(
    out: Path, kind: str, inputs: Iterable[str | Path | None] = (), overwrite: bool = False
) -> None:
    """Raise :class:`Ar2Error` unless ``kind`` output may be written to ``out`` (see module)."""
    _check_inputs(out, inputs)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        if not overwrite:
            what = "a file" if out.is_file() else "not a folder"
            raise Ar2Error(
                f"{out}: --out is {what}. Fix: choose a folder, or pass --overwrite to replace it"
            )
    elif out.is_dir() and any(out.iterdir()) and not is_kind(out, kind) and not overwrite:
        raise Ar2Error(
            f"{out}: --out holds files and is not {KINDS[kind][0]}. "
            "Fix: choose a new or empty folder, or pass --overwrite to replace it"
        )
    _check_writable(out)


def _check_inputs(out: Path, inputs: Iterable[str | Path | None]) -> None:
    target = out.resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if target == source:
            relation = "is"
        elif source in target.parents:
            relation = "lies inside"
        elif target in source.parents:
            relation = "contains"
        else:
            continue
        noun = "folder" if source.is_dir() else "file"
        raise Ar2Error(
            f"{out}: --out {relation} the input {noun} {given}. Fix: write the output "
            "somewhere else: ar2 never writes over, into or around what it reads"
        )


def _check_writable(out: Path) -> None:
    """Create the parent and write a probe file there: fail now, not after hours of work."""
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise Ar2Error(
            f"{out}: cannot write in {parent} ({err.strerror or err}). "
            "Fix: choose an --out in a writable folder with free space"
        ) from None


@contextlib.contextmanager
def claim(
    out: str | Path,
    kind: str,
    inputs: Iterable[str | Path | None] = (),
    overwrite: bool = False,
    exclusive: bool = True,
) -> Iterator[Path]:
    """:func:`check` ``out``, then hold its lock and clear leftovers while the block runs
    (not ``exclusive``: only check, as the other processes of a distributed job do).

    Raises:
        Ar2Error: ``out`` is refused (see :func:`check`), or another process holds the lock.
    """
    out = Path(out)
    check(out, kind, inputs, overwrite)
    if not exclusive:
        yield out
        return
    with lock(out):
        remove_leftovers(out)
        yield out


@contextlib.contextmanager
def lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` beside ``out`` (released by the kernel if the
    process dies, so a killed writer never leaves a stale lock)."""
    path = out.resolve().parent / f".{out.name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _holder(path)
            raise Ar2Error(
                f"{out}: another ar2 process{holder} is writing to this --out. "
                "Fix: wait for it to finish, or choose another --out"
            ) from None
        if _same_file(fd, path):  # not a lock file that its last holder has just removed
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # under the lock: the next writer makes a new one
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="ascii").strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def remove_leftovers(out: Path) -> list[Path]:
    """Remove what killed writers of ``out`` left: ``.<name>.*.tmp`` and ``.<name>.old`` beside
    it, and temporary files and folders inside it (at any depth). Returns what was removed.

    Call it only while holding :func:`lock`: the temporaries of a live writer look the same.
    """
    found = [p for p in out.parent.glob(f".{out.name}.*") if _is_leftover(p, out.name)]
    if out.is_dir() and not out.is_symlink():
        for folder, dirs, files in os.walk(out):
            here = [Path(folder, name) for name in (*dirs, *files)]
            found += [p for p in here if TEMP_NAME.fullmatch(p.name)]
            dirs[:] = [d for d in dirs if not TEMP_NAME.fullmatch(d)]
    for path in found:
        remove_path(path)
    return found


def _is_leftover(path: Path, name: str) -> bool:
    match = TEMP_NAME.fullmatch(path.name)
    return (match is not None and match["name"] == name) or path.name == f".{name}.old"
