"""The Index protocol and the ``manifest.json`` every index folder carries."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from ar2 import __version__
from ar2._io import atomic_write_lines
from ar2.errors import Ar2Error
from ar2.types import Doc, Hit

MANIFEST = "manifest.json"
IDS_FILE = "ids.txt"
DOCS_FILE = "corpus.jsonl"


class Index(Protocol):
    """What every index does. ``search`` takes what its kind needs (texts or vectors)."""

    def search(self, queries: Any, k: int) -> list[list[Hit]]: ...

    def save(
        self, path: str | Path, extra: dict[str, Any] | None = None, docs: Iterable[Doc] = ()
    ) -> None: ...

    @classmethod
    def load(cls, path: str | Path) -> Index: ...


def base_manifest(kind: str, count: int) -> dict[str, Any]:
    """The fields every manifest starts with."""
    return {"kind": kind, "ar2_version": __version__, "count": count}


def read_manifest(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read ``path/manifest.json``; with ``kind``, also check the index is of that kind."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise Ar2Error(
            f"{path}: no {MANIFEST}, so this is not an ar2 index. Fix: build one with `ar2 index`"
        )
    with open(file, encoding="utf-8") as f:
        manifest = json.load(f)
    if kind is not None and manifest.get("kind") != kind:
        raise Ar2Error(f"{path}: a {manifest.get('kind')!r} index, not a {kind!r} one")
    return manifest


def write_ids(path: Path, ids: Sequence[str]) -> None:
    """Write document ids one per line (ids may not contain line breaks)."""
    bad = next((i for i in ids if "\n" in i or "\r" in i), None)
    if bad is not None:
        raise Ar2Error(f"document id {bad!r} contains a line break. Fix: remove it from the id")
    atomic_write_lines(path / IDS_FILE, ids)


def read_ids(path: Path) -> list[str]:
    """Read the ids written by :func:`write_ids`."""
    with open(path / IDS_FILE, encoding="utf-8") as f:
        return f.read().splitlines()


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


def load_index(path: str | Path) -> Any:
    """Load any ar2 index folder, choosing the class from its manifest's ``kind``."""
    from ar2.index.bm25 import BM25Index
    from ar2.index.dense import FaissIndex

    kind = read_manifest(path).get("kind")
    kinds: dict[str, Any] = {"bm25": BM25Index, "dense": FaissIndex}
    if kind not in kinds:
        raise Ar2Error(f"{path}: unknown index kind {kind!r}; expected one of {sorted(kinds)}")
    return kinds[kind].load(path)
