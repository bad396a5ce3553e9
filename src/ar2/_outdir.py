"""Output folders (``--out``): what ar2 may replace, one writer at a time, no leftovers.

Every command that writes a folder goes through :func:`claim`, before any expensive work:

- ``--out`` may not be, hold or lie inside one of the command's inputs;
- a lock beside it (``.<name>.lock``) keeps a second writer out while the first runs
  (inside it, ``.ar2.lock``, for an eval folder or a run under a read-only parent); creating
  it is also the check that the place is writable;
- temporaries that a killed writer left (:data:`ar2._io.TEMP_NAME`, :data:`ar2._io.OLD_NAME`:
  names that only ar2 makes) are removed under the lock, beside ``--out`` always and inside it
  when it is ar2's, except where another process holds a lock;
- a folder that exists must be empty or an ar2 output of the same kind (:data:`KINDS`),
  unless the user passes ``--overwrite``.

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
import errno
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ar2._io import OLD_NAME, TEMP_NAME, remove_path
from ar2.errors import Ar2Error

log = logging.getLogger(__name__)

LOCK_NAME = ".ar2.lock"
"""The lock inside a folder that ar2 writes into (an eval folder, a run)."""
LOCK_WAIT_SECONDS = 5.0
"""How long a held lock is waited for before refusing (a killed writer's process may take a
moment to end and let it go)."""
INDEX_FILES = frozenset(
    {"manifest.json", "ids.txt", "corpus.jsonl", "bm25s", "index.faiss", "vectors.npy"}
)
"""What an index folder holds: one that holds anything else is not replaced whole."""
EVAL_FILES = frozenset(
    {"report.md", "report.json", "report.png", "per_query.tsv", "protocol.json", "runs"}
)
"""What ``ar2 eval`` writes (a folder of these alone, from before eval kept a manifest, is
an eval folder too)."""


def _ours(name: str) -> bool:
    """A temporary, a folder moved aside or a lock: ar2's own, whatever folder it is in."""
    return _leftover(name) or name == LOCK_NAME


def _entries(path: Path) -> set[str]:
    """The names in folder ``path`` other than ar2's temporaries and locks."""
    return {p.name for p in path.iterdir() if not _ours(p.name)}


def _read_json(file: Path) -> object:
    """The JSON in ``file``, or ``None`` when it cannot be read."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _manifest_kind(path: Path) -> str | None:
    """The ``kind`` of an ar2 ``manifest.json`` in ``path`` (it carries ``ar2_version``)."""
    manifest = _read_json(path / "manifest.json")
    if isinstance(manifest, dict) and "ar2_version" in manifest:
        kind = manifest.get("kind")
        return kind if isinstance(kind, str) else None
    return None


def _is_index(path: Path) -> bool:
    """An index's manifest, and nothing but an index's files (it is replaced whole)."""
    return _manifest_kind(path) in ("bm25", "dense") and _entries(path) <= INDEX_FILES


def _is_eval(path: Path) -> bool:
    """An eval's manifest, or (written before eval kept one) nothing but eval's files."""
    names = _entries(path)
    return _manifest_kind(path) == "eval" or ("report.json" in names and names <= EVAL_FILES)


def _is_run(path: Path) -> bool:
    """A run's ``config.json`` is an AR2Config (a model folder's is a model config); a
    damaged one still marks a run (reading it then says what is wrong)."""
    file = path / "config.json"
    if not file.is_file():
        return False
    config = _read_json(file)
    return config is None or isinstance(config, dict) and {"g0", "rounds", "seed"} <= set(config)


def _is_pretrain(path: Path) -> bool:
    return (path / PRETRAIN_CONFIG).is_file()


PRETRAIN_CONFIG = "pretrain.json"
"""The settings and data of an ``ar2 pretrain`` run (not ``config.json``: the run folder is
no model folder)."""

DISTILL_CONFIG = "distill.json"
"""The settings and the run of an ``ar2 distill-query`` output."""


def _is_distill(path: Path) -> bool:
    return (path / DISTILL_CONFIG).is_file()


JPQ_CONFIG = "jpq.json"
"""The settings and the run of an ``ar2 jpq`` output."""


def _is_jpq(path: Path) -> bool:
    return (path / JPQ_CONFIG).is_file()


ADORE_CONFIG = "adore.json"
"""The settings and the run of an ``ar2 adore`` output."""


def _is_adore(path: Path) -> bool:
    return (path / ADORE_CONFIG).is_file()


ANNCUR_CONFIG = "anncur.json"
"""The settings and the run of an ``ar2 anncur`` study."""


def _is_anncur(path: Path) -> bool:
    return (path / ANNCUR_CONFIG).is_file()


SPARSE_CONFIG = "sparse.json"
"""The settings and the run of an ``ar2 sparse`` output."""


def _is_sparse(path: Path) -> bool:
    return (path / SPARSE_CONFIG).is_file()


REPCONC_CONFIG = "repconc.json"
"""The settings and the run of an ``ar2 repconc`` output."""


def _is_repconc(path: Path) -> bool:
    return (path / REPCONC_CONFIG).is_file()


KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "index": ("an ar2 index (`ar2 index`)", _is_index),
    "eval": ("an ar2 eval report (`ar2 eval`)", _is_eval),
    "run": ("an ar2 training run (`ar2 train`)", _is_run),
    "pretrain": ("an ar2 pretraining run (`ar2 pretrain`)", _is_pretrain),
    "distill": ("an ar2 query-tower distillation (`ar2 distill-query`)", _is_distill),
    "jpq": ("an ar2 JPQ compression (`ar2 jpq`)", _is_jpq),
    "adore": ("an ar2 ADORE query tower (`ar2 adore`)", _is_adore),
    "anncur": ("an ar2 ANNCUR study (`ar2 anncur`)", _is_anncur),
    "sparse": ("an ar2 inference-free sparse retriever (`ar2 sparse`)", _is_sparse),
    "repconc": ("an ar2 RepCONC compression (`ar2 repconc`)", _is_repconc),
}
"""Output kinds: a description and a test that a folder is one."""


def is_kind(path: Path, kind: str) -> bool:
    """Whether ``path`` is a folder that ar2 wrote as an output of ``kind`` (:data:`KINDS`)."""
    return path.is_dir() and KINDS[kind][1](path)


def is_empty(path: Path) -> bool:
    """Whether folder ``path`` holds nothing but ar2's temporaries and locks."""
    return not _entries(path)


def written_by_ar2(path: Path) -> bool:
    """Whether folder ``path`` is an artifact ar2 wrote: an ar2 ``manifest.json`` (models,
    indexes, mined groups, reports) or a checkpoint's ``state.json``."""
    if _manifest_kind(path) is not None:
        return True
    state = _read_json(path / "state.json")
    return isinstance(state, dict) and "optim" in state


def check_replaceable(path: Path) -> None:
    """Raise :class:`Ar2Error` unless ``path`` is missing, an empty folder, or a folder ar2
    wrote (:func:`written_by_ar2`): what :func:`ar2._io.atomic_dir` may replace."""
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink():
        if is_empty(path) or written_by_ar2(path):
            return
        problem = f"holds files that ar2 did not write ({_shown(_entries(path))})"
    else:
        problem = "is a file, not a folder" if path.is_file() else "is not a folder"
    raise Ar2Error(
        f"{path}: {problem}. Fix: choose a new or empty folder, or pass --overwrite to replace it"
    )


def _shown(names: Iterable[str], most: int = 3) -> str:
    names = sorted(names)
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def resolve(out: str | Path, replaced: bool = False) -> Path:
    """``out`` as an absolute path without ``.``, ``..`` or links. The file system root is
    refused, and so are the home and working folders (and those above them) when ``out`` is
    ``replaced`` (an index, or ``--overwrite``): that would take everything below them."""
    path = Path(out).expanduser().resolve()
    if path.parent == path:
        raise Ar2Error(f"{out}: --out is the root of the file system. Fix: choose a folder")
    home, cwd = Path.home().resolve(), Path.cwd().resolve()
    if replaced and (path in (home, *home.parents) or path in (cwd, *cwd.parents)):
        raise Ar2Error(
            f"{out}: --out would replace {path}, which holds your home or working folder. "
            "Fix: name a new folder, such as --out runs/index"
        )
    return path


def check_inputs(out: Path, inputs: Iterable[str | Path | None]) -> None:
    """Raise :class:`Ar2Error` if ``out`` is, holds or lies inside one of ``inputs``."""
    target = out.resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).expanduser().resolve()
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


def check(out: Path, kind: str, overwrite: bool = False) -> None:
    """Raise :class:`Ar2Error` unless ``out`` may take a ``kind`` output (see the module)."""
    if out.exists() and not out.is_dir():
        if overwrite and kind == "index":
            return  # replaced whole by the index folder
        fix = "choose a folder" + (", or pass --overwrite to replace it" if kind == "index" else "")
        raise Ar2Error(f"{out}: --out is a file, not a folder. Fix: {fix}")
    if out.is_dir() and not is_empty(out) and not is_kind(out, kind) and not overwrite:
        unexpected = _entries(out) - INDEX_FILES if kind == "index" else set()
        also = f" (it holds {_shown(unexpected)})" if unexpected else ""
        raise Ar2Error(
            f"{out}: --out holds files and is not {KINDS[kind][0]}{also}. "
            "Fix: choose a new or empty folder, or pass --overwrite"
        )


@contextlib.contextmanager
def claim(
    out: str | Path,
    kind: str,
    inputs: Iterable[str | Path | None] = (),
    overwrite: bool = False,
) -> Iterator[Path]:
    """Check ``out`` for a ``kind`` output and hold its lock while the block runs; yields
    ``out`` resolved (see the module).

    Raises:
        Ar2Error: ``out`` is refused, cannot be written, or another process holds its lock.
    """
    path = resolve(out, replaced=overwrite or kind == "index")
    check_inputs(path, inputs)
    with lock(path, inside=kind != "index"):
        remove_leftovers(path, inside=False)
        check(path, kind, overwrite)  # once what a killed writer left is gone
        if is_kind(path, kind) or (path.is_dir() and is_empty(path)):
            remove_leftovers(path, inside=True)
        yield path


def resumed_record(
    out: Path, name: str, what: str, resume: bool, overwrite: bool
) -> dict[str, Any] | None:
    """The record ``out/name`` of the output being resumed (``None``: nothing to resume, or
    ``overwrite``); without ``resume`` an existing one is refused (``what`` names it)."""
    saved = out / name
    if not saved.is_file() or overwrite:
        return None
    if not resume:
        raise Ar2Error(
            f"{out} holds {what}. Fix: pass --resume to continue it, --overwrite to start it "
            "again, or a new --out"
        )
    return json.loads(saved.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def changed_settings(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """The settings of ``want`` whose saved value in ``have`` differs.

    Example:
        >>> changed_settings({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4})
        ['b', 'c']
    """
    return sorted(k for k in want if have.get(k) != want[k])


def clear_folder(path: Path) -> None:
    """Remove everything in folder ``path`` but its lock (``--overwrite`` of a run)."""
    for entry in path.iterdir():
        if entry.name != LOCK_NAME:
            remove_path(entry)


def _unwritable(path: Path, err: OSError) -> Ar2Error:
    """The error for a place where nothing can be written."""
    return Ar2Error(
        f"{path}: cannot write there ({err.strerror or err}). "
        "Fix: choose an --out in a writable folder with free space"
    )


@contextlib.contextmanager
def lock(out: Path, inside: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``out``: ``.<name>.lock`` beside it, or, for a folder that is
    written into (``inside``) under a parent where nothing can be written, ``.ar2.lock`` in it.
    The kernel releases it when the process dies, so a killed writer leaves no stale lock; on
    a file system without locks (some NFS and Lustre mounts) a warning says that writers are
    not kept apart."""
    path = out.parent / f".{out.name}.lock"
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd = _locked(path, out)
        except PermissionError:
            if not inside:
                raise
            path = out / LOCK_NAME
            fd = _locked(path, out)
    except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise _unwritable(path.parent, err) from None
        log.warning("%s: the file system has no locks (%s): writers are not kept apart", out, err)
        yield
        return
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # under the lock: the next writer makes a new one
        os.close(fd)


def _locked(path: Path, out: Path) -> int:
    """A descriptor of ``path`` holding its lock, waiting :data:`LOCK_WAIT_SECONDS` at most."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() > deadline:
                raise Ar2Error(
                    f"{out}: another ar2 process{_holder(path)} is writing to this --out. "
                    "Fix: wait for it to finish, or choose another --out"
                ) from None
            time.sleep(0.1)
            continue
        except OSError:
            os.close(fd)
            raise
        if _same_file(fd, path):  # not a lock file that its last holder has just removed
            return fd
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


def remove_leftovers(out: Path, inside: bool) -> list[Path]:
    """Remove what killed writers of ``out`` left (temporaries, folders moved aside): beside
    it, or (``inside``) at any depth in it, except for what a live process holds a lock on (a
    folder with a held ``.ar2.lock``, or ``x`` beside a held ``.x.lock``). Returns what was
    removed. Call it only while holding :func:`lock`."""
    if not inside:
        found = [p for p in out.parent.iterdir() if _leftover(p.name, target=out.name)]
    elif out.is_dir():
        found = []
        for folder, dirs, files in os.walk(out):
            held = {n[1:-5] for n in files if n.endswith(".lock") and _held(Path(folder, n))}
            here = [n for n in (*dirs, *files) if _leftover(n) and _target(n) not in held]
            found += [Path(folder, n) for n in here]
            dirs[:] = [d for d in dirs if d not in held and d not in here
                       and not _held(Path(folder, d, LOCK_NAME))]  # fmt: skip
    else:
        found = []
    for path in found:
        remove_path(path)
    return found


def _leftover(name: str, target: str | None = None) -> bool:
    """Whether ``name`` is an ar2 temporary or folder moved aside (of ``target``, if given)."""
    match = TEMP_NAME.fullmatch(name) or OLD_NAME.fullmatch(name)
    return match is not None and target in (None, match["name"])


def _target(name: str) -> str:
    match = TEMP_NAME.fullmatch(name) or OLD_NAME.fullmatch(name)
    return match["name"] if match else name


def _held(lock_file: Path) -> bool:
    """Whether a live process holds ``lock_file`` (one a killed writer left is not held)."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)
