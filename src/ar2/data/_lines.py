"""Shared plumbing of the loaders: line reading, UTF-8 decoding and per-line validation.

Private: the public loaders live in :mod:`ar2.data.beir` and :mod:`ar2.data.trec`. Every
defect is reported as ``file:line: problem. Fix: ...`` through :class:`ar2.errors.DataError`
or, when harmless, one aggregated :class:`ar2.errors.DataWarning` per file.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable, Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Protocol, TypeVar

from ar2.errors import DataError, warn_data
from ar2.types import Doc, Qrels

PathLike = str | os.PathLike[str]
"""Anything ``pathlib.Path`` accepts."""

MIN_GRADE = -1000
"""The lowest relevance grade a qrels file may hold (TREC uses -2 for junk, -1 for spam)."""
MAX_GRADE = 1000
"""The highest relevance grade a qrels file may hold (real collections stop at 4).

trec_eval, which computes the measures, allocates about 8 bytes per grade level up to the
largest grade: 1 000 costs nothing, 10**8 takes 0.8 GB and 2**31 16 GB.
"""
GRADE_FIX = (
    f"write the relevance grade as a whole number from {MIN_GRADE} to {MAX_GRADE}, "
    "such as 0, 1 or 2 (grades > 0 count as relevant)"
)
ID_RULE = (
    "ids may not hold whitespace, line breaks, control characters or lone surrogates, "
    "which TREC runs and index ids.txt files cannot carry"
)
"""Why an id is refused: the fix of every bad-id error."""

_BOM = b"\xef\xbb\xbf"
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?inf(inity)?", re.I)
# every str.isspace character (\s), every control character (Cc) and every lone surrogate
_BAD_ID_CHAR = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # what splitlines() splits on
_CHAR_KINDS = {" ": "a space", "\t": "a tab"}
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


def id_problem(value: str) -> str | None:
    """What makes ``value`` unusable as an id, or ``None`` when it is fine.

    Refused: the empty id, and any character a line-based file or a TREC run cannot carry:
    every ``str.isspace`` character (space, tab and all that ``str.splitlines`` splits on),
    every control character (Unicode category Cc) and every lone surrogate.

    Example:
        >>> id_problem("doc-1") is None
        True
        >>> id_problem("doc 1")
        'holds a space (U+0020) at character 4'
        >>> id_problem("a\\u2028b")
        'holds a line break (U+2028) at character 2'
        >>> id_problem("x\\x00")
        'holds a control character (U+0000) at character 2'
    """
    if not value:
        return "is empty"
    bad = _BAD_ID_CHAR.search(value)
    if bad is None:
        return None
    return f"holds {describe_char(bad.group())} at character {bad.start() + 1}"


def describe_char(char: str) -> str:
    """Name a refused character for an error message.

    Example:
        >>> describe_char("\\t"), describe_char("\\x85"), describe_char("\\ud800")
        ('a tab (U+0009)', 'a line break (U+0085)', 'a lone surrogate (U+D800)')
    """
    if char in _CHAR_KINDS:
        kind = _CHAR_KINDS[char]
    elif char in _LINE_BREAKS:
        kind = "a line break"
    elif unicodedata.category(char) == "Cs":
        kind = "a lone surrogate"
    elif char.isspace():
        kind = "whitespace"
    else:
        kind = "a control character"
    return f"{kind} (U+{ord(char):04X})"


def require_id(path: Path, no: int, cell: str, what: str) -> str:
    """Return the id ``cell`` stripped of surrounding whitespace, or raise a DataError if it is
    empty or holds a character :func:`id_problem` refuses.

    Example:
        >>> require_id(Path("q.tsv"), 3, " q1 ", "query")
        'q1'
        >>> require_id(Path("q.tsv"), 3, "q\\v1", "query")
        Traceback (most recent call last):
        ar2.errors.DataError: q.tsv:3: query id 'q\\x0b1' holds a line break (U+000B) at ...
    """
    value = cell.strip()
    if not value:
        raise DataError(path, no, f"empty {what} id", f"give every line a non-empty {what} id")
    problem = id_problem(value)
    if problem is not None:
        problem = f"{what} id {shorten(value)} {problem}"
        raise DataError(path, no, problem, f"remove it: {ID_RULE}")
    return value


def require_text(path: Path, no: int, value: str, what: str) -> str:
    """Return ``value``, or raise a DataError if it holds a lone surrogate (which no UTF-8
    file can hold: a JSON ``"\\ud800"`` escape without its pair gives one).

    Example:
        >>> import json
        >>> require_text(Path("c.jsonl"), 2, json.loads(r'"\\ud83d\\ude00 pair"'), '"text"')
        '😀 pair'
        >>> require_text(Path("c.jsonl"), 2, json.loads(r'"\\ud83d alone"'), '"text"')
        Traceback (most recent call last):
        ar2.errors.DataError: c.jsonl:2: "text" holds a lone surrogate (U+D83D) at character 1...
    """
    bad = _SURROGATE.search(value)
    if bad is None:
        return value
    problem = f"{what} holds {describe_char(bad.group())} at character {bad.start() + 1}"
    fix = "write the character itself, or both halves of its JSON escape (\\ud83d\\ude00)"
    raise DataError(path, no, problem, fix)


def looks_int(cell: str) -> bool:
    """Whether ``cell`` is a whole number such as ``"2"`` or ``"-1"``."""
    return _INT.fullmatch(cell.strip()) is not None


def parse_int(path: Path, no: int, cell: str, what: str, fix: str) -> int:
    """Parse a whole number (``"2"``, ``"-1"``); anything else (``"1.0"``, ``"1_0"``) raises,
    and so does one too long for Python's ``int`` (over 4300 digits)."""
    if not looks_int(cell):
        raise DataError(path, no, f"{what} {shorten(cell)} is not a whole number", fix)
    try:
        return int(cell)
    except ValueError:
        raise DataError(path, no, f"{what} {shorten(cell)} has too many digits", fix) from None


def parse_grade(path: Path, no: int, cell: str) -> int:
    """Parse a relevance grade: a whole number from :data:`MIN_GRADE` to :data:`MAX_GRADE`.

    Example:
        >>> parse_grade(Path("qrels.txt"), 1, "2")
        2
        >>> parse_grade(Path("qrels.txt"), 1, "4294967297")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ar2.errors.DataError: qrels.txt:1: relevance grade 4294967297 is outside -1000..1000...
    """
    grade = parse_int(path, no, cell, "relevance grade", GRADE_FIX)
    if not MIN_GRADE <= grade <= MAX_GRADE:
        problem = f"relevance grade {shorten(cell.strip(), quote=False)} is outside "
        raise DataError(path, no, f"{problem}{MIN_GRADE}..{MAX_GRADE}", GRADE_FIX)
    return grade


def parse_float(path: Path, no: int, cell: str, what: str) -> float:
    """Parse a real number; NaN, ``"1_0"`` and other odd spellings raise."""
    text = cell.strip()
    value = float(text) if _FLOAT.fullmatch(text) else math.nan
    if math.isnan(value):
        raise DataError(
            path, no, f"{what} {shorten(cell)} is not a number", f"write the {what} as a number"
        )
    return value


def shorten(cell: str, limit: int = 40, quote: bool = True) -> str:
    """``repr(cell)`` (or ``cell``), cut to about ``limit`` characters for an error message.

    Example:
        >>> shorten("2"), shorten("9" * 5000)
        ("'2'", "'9999999999999999999999999999999999999999'... (5000 characters)")
    """
    short = cell[:limit]
    text = repr(short) if quote else short
    return text if short == cell else f"{text}... ({len(cell)} characters)"


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
    path: Path,
    parse: Callable[[Path], Iterator[tuple[int, Doc]]],
    warn: bool = True,
    no_text_fix: Callable[[], str] | None = None,
) -> Iterator[Doc]:
    """Yield the documents ``parse(path)`` reads, rejecting duplicate ids.

    Empty documents (no title, no text) are kept and reported by one warning at the end
    (unless ``warn`` is false: a later pass over a file already read). A file in which *every*
    document is empty is a DataError at the end, its fix given by ``no_text_fix()``: nothing in
    it could ever be retrieved, which is most likely the text under a key ar2 does not read.
    """
    empty = Tally(
        path,
        "empty document(s) with neither title nor text",
        "fill them in or delete them; they are kept but no query can match them",
    )
    count = 0
    for no, doc in unique_ids(path, "document", parse(path), lambda: parse(path)):
        count += 1
        if not doc.title.strip() and not doc.text.strip():
            empty.add(no)
        yield doc
    if count and empty.count == count:
        problem = f"all {count} document(s) are empty, with neither title nor text"
        fix = no_text_fix() if no_text_fix is not None else "fill in the documents' text"
        raise DataError(path, None, problem, fix)
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
        self._relevant = False  # whether any grade is > 0

    def add(self, no: int, qid_cell: str, doc_cell: str, grade_cell: str) -> None:
        """Add the judgement on line ``no``."""
        path = self.path
        qid = require_id(path, no, qid_cell, "query")
        doc_id = require_id(path, no, doc_cell, "document")
        grade = parse_grade(path, no, grade_cell)
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
        self._relevant = self._relevant or grade > 0

    def result(self) -> Qrels:
        """The judgements, in file order; a file without any, or without any relevant one
        (grade > 0), is a DataError: no query could be scored."""
        if not self.qrels:
            raise DataError(self.path, None, "no judgements", "add at least one judgement line")
        if not self._relevant:
            count = sum(map(len, self.qrels.values()))
            problem = f"no relevant judgement: all {count} grade(s) are 0 or below"
            fix = "give the relevant documents a grade of 1 or more (grades > 0 count as relevant)"
            raise DataError(self.path, None, problem, fix)
        return self.qrels
