"""The Index protocol and the ``manifest.json`` every index folder carries."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from ar2 import __version__
from ar2._io import atomic_write_lines
from ar2.data._lines import ID_RULE, id_problem
from ar2.errors import Ar2Error
from ar2.types import Doc, Hit

MANIFEST = "manifest.json"
IDS_FILE = "ids.txt"
DOCS_FILE = "corpus.jsonl"
REBUILD_FIX = "Fix: rebuild the index with `ar2 index`"


class Index(Protocol):
    """What every index does. ``search`` takes what its kind needs (texts or vectors)."""

    def search(self, queries: Any, k: int) -> list[list[Hit]]: ...

    def save(
        self,
        path: str | Path,
        extra: dict[str, Any] | None = None,
        docs: Iterable[Doc] = (),
        overwrite: bool = False,
    ) -> None: ...

    @classmethod
    def load(cls, path: str | Path) -> Index: ...


def base_manifest(kind: str, count: int) -> dict[str, Any]:
    """The fields every manifest starts with."""
    return {"kind": kind, "ar2_version": __version__, "count": count}


def read_manifest(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read ``path/manifest.json``; with ``kind``, also check the index is of that kind.

    Raises:
        Ar2Error: No manifest, one that is not a JSON object (truncated, corrupt), or an index
            of another kind.

    Example:
        >>> import pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / MANIFEST).write_text('{"kind": "bm25", "count": 3')
        >>> read_manifest(d)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ar2.errors.Ar2Error: .../manifest.json: not valid JSON (Expecting ... index`
    """
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise Ar2Error(
            f"{path}: no {MANIFEST}, so this is not an ar2 index. Fix: build one with `ar2 index`"
        )
    manifest = _json_file(file)
    if not isinstance(manifest, dict):
        raise Ar2Error(f"{file}: not valid JSON (not an object). {REBUILD_FIX}")
    if kind is not None and manifest.get("kind") != kind:
        raise Ar2Error(f"{path}: a {manifest.get('kind')!r} index, not a {kind!r} one")
    return manifest


def _json_file(file: Path) -> Any:
    """The JSON value in ``file``; anything unreadable is an Ar2Error naming it."""
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as e:
        problem = f"{e.msg} at line {e.lineno} column {e.colno}"
    except (RecursionError, ValueError) as e:  # bad UTF-8, too deep, too many digits
        problem = type(e).__name__
    raise Ar2Error(f"{file}: not valid JSON ({problem}). {REBUILD_FIX}")


def write_ids(path: Path, ids: Sequence[str]) -> None:
    """Write document ids one per line; an empty id, or one holding a character that a
    line-based file cannot carry (see :func:`ar2.data._lines.id_problem`), is refused.

    Example:
        >>> import pathlib, tempfile
        >>> write_ids(pathlib.Path(tempfile.mkdtemp()), ["d1", "d\\u20282"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ar2.errors.Ar2Error: document id 'd\\u20282' holds a line break (U+2028) at ... the id (...)
    """
    for doc_id in ids:
        problem = id_problem(doc_id) if isinstance(doc_id, str) else "is not a string"
        if problem is not None:
            raise Ar2Error(
                f"document id {doc_id!r} {problem}, so it cannot be written to {IDS_FILE}. "
                f"Fix: remove it from the id ({ID_RULE})"
            )
    atomic_write_lines(path / IDS_FILE, ids)


def read_ids(path: Path, count: int | None = None) -> list[str]:
    """Read the ids written by :func:`write_ids`: one per ``\\n``-ended line (only ``\\n``
    ends a line), and exactly ``count`` of them (by default the manifest's ``count``).

    Raises:
        Ar2Error: ``ids.txt`` is missing, not UTF-8, or holds another number of ids than the
            index has rows (changed or truncated after the index was built).
    """
    file = Path(path) / IDS_FILE
    want = _manifest_count(path) if count is None else count
    try:
        text = file.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise Ar2Error(f"{file}: unreadable ({type(e).__name__}). {REBUILD_FIX}") from None
    ids = text.split("\n")
    if ids.pop() != "":
        raise Ar2Error(f"{file}: the last line is cut off (no line break). {REBUILD_FIX}")
    if len(ids) != want:
        problem = f"{len(ids)} id(s), but the index has {want} rows ({MANIFEST} count)"
        raise Ar2Error(f"{file}: {problem}; the file was changed after the build. {REBUILD_FIX}")
    return ids


def _manifest_count(path: Path) -> int:
    count = read_manifest(path).get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise Ar2Error(f'{Path(path) / MANIFEST}: no valid "count" ({count!r}). {REBUILD_FIX}')
    return count


def write_docs(path: Path, docs: Iterable[Doc]) -> None:
    """Store the documents (BEIR ``corpus.jsonl`` format) so an index folder is self-contained;
    a stream of them is written a line at a time. Nothing is written for no documents."""
    lines = (
        json.dumps({"_id": d.id, "title": d.title, "text": d.text}, ensure_ascii=False)
        for d in docs
    )
    if not atomic_write_lines(path / DOCS_FILE, lines):
        (path / DOCS_FILE).unlink()


def iter_docs(path: str | Path) -> Iterator[Doc]:
    """Stream the documents stored by :func:`write_docs` (empty when none were stored)."""
    from ar2.data.beir import iter_corpus

    file = Path(path) / DOCS_FILE
    if file.is_file():
        yield from iter_corpus(file)
