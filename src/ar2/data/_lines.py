"""Shared plumbing of the loaders: line reading, UTF-8 decoding and per-line validation.

Private: the public loaders live in :mod:`ar2.data.beir` and :mod:`ar2.data.trec`. Every
defect is reported as ``file:line: problem. Fix: ...`` through :class:`ar2.errors.DataError`
or, when harmless, one aggregated :class:`ar2.errors.DataWarning` per file.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Protocol, TypeVar

from ar2.errors import DataError, warn_data
from ar2.types import Doc, Qrels

PathLike = str | os.PathLike[str]
"""Anything ``pathlib.Path`` accepts."""

_BOM = b"\xef\xbb\xbf"
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?inf(inity)?", re.I)
UTF8_FIX = "re-save the file as UTF-8 (for example `iconv -f latin1 -t utf-8 IN > OUT`)"


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=_HasId)


def require_file(path: PathLike, what: str, fix: str) -> Path:
    """Return ``path`` as a ``Path``, or raise a DataError if it is not an existing file."""
    p = Path(path)
    if not p.exists():
        raise DataError(p, None, f"{what} file not found", fix)
    if not p.is_file():
        raise DataError(p, None, f"{what} path is not a file", fix)
    return p


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each non-blank line, decoded as UTF-8.

    The file is read in binary and split on ``\\n`` only, so U+2028 and friends inside a line
    stay inside it; a UTF-8 BOM on line 1 and a trailing ``\\r`` are dropped.
    """
    with path.open("rb") as f:
        for no, raw in enumerate(f, 1):
            if no == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = raw[e.start]
                problem = f"invalid UTF-8 byte 0x{bad:02x} at byte {e.start + 1} of the line"
                raise DataError(path, no, problem, UTF8_FIX) from None
            line = line.rstrip("\n").rstrip("\r")
            if line.strip():
                yield no, line


def split_columns(
    path: Path, no: int, line: str, counts: tuple[int, ...], layout: str, sep: str | None = "\t"
) -> list[str]:
    """Split ``line`` on ``sep`` (``None``: whitespace); raise unless it has ``counts`` cells."""
    cells = line.split(sep)
    if len(cells) in counts:
        return cells
    want = " or ".join(map(str, counts))
    how, between = ("tab", "single tabs") if sep == "\t" else ("whitespace", "spaces or tabs")
    fix = f"write each line as {layout}, separated by {between}"
    if sep == "\t" and len(cells) == 1 and len(line.split()) in counts:
        fix += " (this line uses spaces, not tabs)"
    raise DataError(path, no, f"expected {want} {how}-separated columns, got {len(cells)}", fix)


def require_id(path: Path, no: int, cell: str, what: str) -> str:
    """Return the stripped id ``cell``; an empty one is a DataError."""
    value = cell.strip()
    if not value:
        raise DataError(path, no, f"empty {what} id", f"give every line a non-empty {what} id")
    return value


def looks_int(cell: str) -> bool:
    """Whether ``cell`` is a whole number such as ``"2"`` or ``"-1"``."""
    return _INT.fullmatch(cell.strip()) is not None


def parse_int(path: Path, no: int, cell: str, what: str, fix: str) -> int:
    """Parse a whole number (``"2"``, ``"-1"``); anything else (``"1.0"``, ``"1_0"``) raises."""
    if not looks_int(cell):
        raise DataError(path, no, f"{what} {cell!r} is not a whole number", fix)
    return int(cell)


def parse_float(path: Path, no: int, cell: str, what: str) -> float:
    """Parse a real number; NaN, ``"1_0"`` and other odd spellings raise."""
    text = cell.strip()
    value = float(text) if _FLOAT.fullmatch(text) else math.nan
    if math.isnan(value):
        raise DataError(
            path, no, f"{what} {cell!r} is not a number", f"write the {what} as a number"
        )
    return value


def unique_ids(
    path: Path,
    kind: str,
    items: Iterable[tuple[int, T]],
    rescan: Callable[[], Iterable[tuple[int, T]]],
) -> Iterator[tuple[int, T]]:
    """Pass ``items`` through, raising on a repeated ``.id``.

    Only the ids are held (a set, not line numbers); on a duplicate the file is read again by
    ``rescan`` to name the first line too, so the error costs a second pass, not memory.
    """
    seen: set[str] = set()
    for no, item in items:
        if item.id in seen:
            first = next(n for n, other in rescan() if other.id == item.id)
            problem = f"duplicate {kind} id {item.id!r} (first on line {first})"
            fix = f"give every {kind} a unique id, or delete line {first} or line {no}"
            raise DataError(path, no, problem, fix)
        seen.add(item.id)
        yield no, item


class Tally:
    """Counts lines with a harmless defect and warns once for the whole file."""

    def __init__(self, path: Path, problem: str, fix: str, shown: int = 5) -> None:
        self.path, self.problem, self.fix, self.shown = path, problem, fix, shown
        self.count = 0
        self.lines: list[int] = []

    def add(self, no: int) -> None:
        """Record one defective line."""
        self.count += 1
        if len(self.lines) < self.shown:
            self.lines.append(no)

    def warn(self) -> None:
        """Emit one DataWarning with the count and the first few line numbers, if any."""
        if not self.count:
            return
        more = ", ..." if self.count > len(self.lines) else ""
        where = f"line{'s' if self.count > 1 else ''} {', '.join(map(str, self.lines))}{more}"
        warn_data(self.path, self.lines[0], f"{self.count} {self.problem} ({where})", self.fix)


def stream_docs(
    path: Path, parse: Callable[[Path], Iterator[tuple[int, Doc]]], warn: bool = True
) -> Iterator[Doc]:
    """Yield the documents ``parse(path)`` reads, rejecting duplicate ids.

    Empty documents (no title, no text) are kept and reported by one warning at the end
    (unless ``warn`` is false: a later pass over a file already read).
    """
    empty = Tally(
        path,
        "empty document(s) with neither title nor text",
        "fill them in or delete them; they are kept but no query can match them",
    )
    for no, doc in unique_ids(path, "document", parse(path), lambda: parse(path)):
        if not doc.title.strip() and not doc.text.strip():
            empty.add(no)
        yield doc
    if warn:
        empty.warn()


def as_id_set(ids: Collection[str] | None) -> Collection[str] | None:
    """A set view of ``ids`` for fast membership tests (sets and dict keys pass through)."""
    if ids is None or isinstance(ids, AbstractSet):
        return ids
    return set(ids)


class QrelsBuilder:
    """Collects judgements, rejecting bad grades, duplicates and unknown ids per line."""

    def __init__(
        self, path: Path, query_ids: Collection[str] | None, doc_ids: Collection[str] | None
    ) -> None:
        self.path = path
        self.query_ids, self.doc_ids = as_id_set(query_ids), as_id_set(doc_ids)
        self.qrels: Qrels = {}
        self._first: dict[tuple[str, str], int] = {}

    def add(self, no: int, qid_cell: str, doc_cell: str, grade_cell: str) -> None:
        """Add the judgement on line ``no``."""
        path = self.path
        qid, doc_id = require_id(path, no, qid_cell, "query"), require_id(path, no, doc_cell, "doc")
        fix = "write the relevance grade as a whole number such as 0, 1 or 2"
        grade = parse_int(path, no, grade_cell, "relevance grade", fix)
        if self.query_ids is not None and qid not in self.query_ids:
            fix = f"add query {qid!r} to the queries file, or delete this line"
            raise DataError(path, no, f"query id {qid!r} is not in the queries", fix)
        if self.doc_ids is not None and doc_id not in self.doc_ids:
            fix = f"add document {doc_id!r} to the corpus, or delete this line"
            raise DataError(path, no, f"document id {doc_id!r} is not in the corpus", fix)
        first = self._first.setdefault((qid, doc_id), no)
        if first != no:
            problem = f"duplicate judgement of query {qid!r} and document {doc_id!r}"
            fix = f"keep one of line {first} and line {no}"
            raise DataError(path, no, f"{problem} (first on line {first})", fix)
        self.qrels.setdefault(qid, {})[doc_id] = grade

    def result(self) -> Qrels:
        """The judgements, in file order; a file without any is a DataError."""
        if not self.qrels:
            raise DataError(self.path, None, "no judgements", "add at least one judgement line")
        return self.qrels
