"""BEIR folders: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

Ids are always ``str`` (an integer ``"_id"`` becomes its decimal string; surrounding
whitespace is dropped). An id holding whitespace, a line break, a control character or a lone
surrogate is refused, since TREC runs and index ``ids.txt`` files could not carry it; so is a
text holding a lone surrogate (a JSON ``"\\ud800"`` escape without its pair). Every defect
raises :class:`ar2.errors.DataError` naming the file, the line and the fix; an empty document is
allowed but reported by one :class:`ar2.errors.DataWarning` per file, and a corpus whose
documents are *all* empty is a DataError.

Example:
    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "corpus.jsonl").write_text('{"_id": "d1", "text": "Cats eat fish."}\\n')
    >>> _ = (d / "queries.jsonl").write_text('{"_id": "q1", "text": "what do cats eat"}\\n')
    >>> (d / "qrels").mkdir()
    >>> _ = (d / "qrels" / "test.tsv").write_text("query-id\\tcorpus-id\\tscore\\nq1\\td1\\t1\\n")
    >>> docs, queries, qrels = load_beir(d, "test")
    >>> qrels
    {'q1': {'d1': 1}}
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from ar2.data._lines import (
    PathLike,
    QrelsBuilder,
    iter_lines,
    looks_int,
    require_file,
    require_id,
    require_text,
    split_columns,
    stream_docs,
    unique_ids,
)
from ar2.errors import DataError, warn_data
from ar2.types import Doc, Qrels, Query

__all__ = [
    "QRELS_HEADER",
    "available_splits",
    "iter_corpus",
    "load_beir",
    "load_corpus",
    "load_qrels",
    "load_queries",
]

QRELS_HEADER = ("query-id", "corpus-id", "score")
"""The first line of a BEIR qrels file, tab-separated."""

_HEADER_TEXT = "query-id<TAB>corpus-id<TAB>score"
_BEIR_FIX = "check the path; a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv"
_DOC_EXAMPLE = '{"_id": "d1", "title": "Cats", "text": "Cats eat fish."}'
_QUERY_EXAMPLE = '{"_id": "q1", "text": "what do cats eat"}'
_JSON_KINDS = {list: "a JSON array", str: "a string", bool: "true/false", type(None): "null"}


def iter_corpus(path: PathLike, warn: bool = True) -> Iterator[Doc]:
    """Stream the documents of a BEIR ``corpus.jsonl``, one line at a time.

    Only the ids seen so far are kept (to catch duplicates), never the texts. A missing file
    raises at once; defects in a line raise when that line is reached. Empty documents are
    counted and reported by one warning once the whole file has been read; if every document is
    empty (say, the text is under ``"contents"``: ar2 reads ``"title"`` and ``"text"``), the end
    of the file raises instead.

    Args:
        path: The ``corpus.jsonl`` file: one ``{"_id", "title", "text"}`` object per line.
        warn: Report empty documents (off for a second pass over a file already read).

    Yields:
        One :class:`~ar2.types.Doc` per non-blank line, in file order.

    Raises:
        DataError: Missing file, bad UTF-8 or JSON, missing ``"_id"``, duplicate id, an id
            holding whitespace or a control character, bad field, every document empty.

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "corpus.jsonl"
        >>> _ = p.write_text('{"_id": 7, "title": "Cats", "text": "Cats eat fish."}\\n')
        >>> next(iter_corpus(p))
        Doc(id='7', text='Cats eat fish.', title='Cats')
    """
    p = require_file(path, "corpus", _BEIR_FIX)
    return stream_docs(p, _parse_corpus, warn, lambda: _no_text_fix(p))


def _parse_corpus(path: Path) -> Iterator[tuple[int, Doc]]:
    for no, line in iter_lines(path):
        obj = _json_object(path, no, line, _DOC_EXAMPLE)
        doc_id = _id_field(path, no, obj, "document", _DOC_EXAMPLE)
        yield (
            no,
            Doc(doc_id, _text_field(path, no, obj, "text"), _text_field(path, no, obj, "title")),
        )


def _no_text_fix(path: Path) -> str:
    """The fix for a corpus without any text: name the keys its first line has."""
    no, line = next(iter_lines(path))
    keys = ", ".join(map(repr, _json_object(path, no, line, _DOC_EXAMPLE))) or "none"
    return (
        f'ar2 reads a document\'s text from "title" and "text" (line {no} has the keys {keys}); '
        f"put the text there, like {_DOC_EXAMPLE}"
    )


def count_documents(path: PathLike) -> int:
    """The documents of ``corpus.jsonl`` counted as its non-blank lines, nothing parsed (a
    settings check before the corpus is read).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "corpus.jsonl"
        >>> _ = path.write_text('{"_id": "a", "text": "x"}\\n\\n{"_id": "b", "text": "y"}\\n')
        >>> count_documents(path)
        2
    """
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def load_corpus(path: PathLike) -> list[Doc]:
    """Read a whole BEIR ``corpus.jsonl`` into a list (see :func:`iter_corpus`).

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "corpus.jsonl"
        >>> _ = p.write_text('{"_id": "d1", "text": "a"}\\n\\n{"_id": "d2", "text": "b"}\\n')
        >>> [doc.id for doc in load_corpus(p)]
        ['d1', 'd2']
    """
    return list(iter_corpus(path))


def load_queries(path: PathLike) -> list[Query]:
    """Read a BEIR ``queries.jsonl``.

    For QA data (DPR style) the answers are read from a top-level ``"answers"`` list or, failing
    that, from ``"metadata": {"answers": [...]}``.

    Args:
        path: The ``queries.jsonl`` file: one ``{"_id", "text"}`` object per line.

    Returns:
        The queries in file order.

    Raises:
        DataError: Missing file, bad UTF-8 or JSON, missing ``"_id"``, duplicate id, an id
            holding whitespace or a control character, empty text, ``"answers"`` that is not a
            list of strings, a text holding a lone surrogate.

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "queries.jsonl"
        >>> _ = p.write_text('{"_id": 1, "text": "capital of France?", "answers": ["Paris"]}\\n')
        >>> load_queries(p)
        [Query(id='1', text='capital of France?', answers=('Paris',))]
    """
    p = require_file(path, "queries", _BEIR_FIX)
    pairs = unique_ids(p, "query", _parse_queries(p), lambda: _parse_queries(p))
    return [query for _, query in pairs]


def _parse_queries(path: Path) -> Iterator[tuple[int, Query]]:
    for no, line in iter_lines(path):
        obj = _json_object(path, no, line, _QUERY_EXAMPLE)
        qid = _id_field(path, no, obj, "query", _QUERY_EXAMPLE)
        text = _text_field(path, no, obj, "text")
        if not text.strip():
            fix = 'give every query a non-empty "text", or delete the line'
            raise DataError(path, no, f"query {qid!r} has empty text", fix)
        yield no, Query(qid, text, _answers(path, no, obj))


def load_qrels(
    path: PathLike,
    query_ids: Collection[str] | None = None,
    doc_ids: Collection[str] | None = None,
) -> Qrels:
    """Read a BEIR ``qrels/<split>.tsv``: a ``query-id<TAB>corpus-id<TAB>score`` header, then rows.

    Grades are kept as given and must be whole numbers from :data:`~ar2.data.MIN_GRADE` (-1000)
    to :data:`~ar2.data.MAX_GRADE` (1000); grades > 0 count as relevant, and a file without any
    is refused. A query keeps all its judged documents. A file whose first row is already data
    (its third column is a whole number) is read with a warning.

    Args:
        path: The qrels file.
        query_ids: When given, every query id must be one of these.
        doc_ids: When given, every document id must be one of these.

    Returns:
        ``query_id -> {doc_id: grade}`` in file order.

    Raises:
        DataError: Missing file, wrong header, wrong column count, a grade that is not a whole
            number from -1000 to 1000, an id holding whitespace or a control character,
            duplicate (query, document) row, unknown query or document id, no judgements at all,
            no judgement with a grade > 0.

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "test.tsv"
        >>> _ = p.write_text("query-id\\tcorpus-id\\tscore\\nq1\\td1\\t2\\nq1\\td2\\t1\\n")
        >>> load_qrels(p)
        {'q1': {'d1': 2, 'd2': 1}}
    """
    p = require_file(path, "qrels", _BEIR_FIX)
    builder = QrelsBuilder(p, query_ids, doc_ids)
    for no, line in _qrels_rows(p):
        qid, doc_id, grade = split_columns(p, no, line, (3,), "query-id, corpus-id, score")
        builder.add(no, qid, doc_id, grade)
    return builder.result()


def _qrels_rows(path: Path) -> Iterator[tuple[int, str]]:
    """The data lines of a BEIR qrels file: the header is checked and dropped, if present."""
    lines = iter_lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError(path, None, "empty qrels file", f"start it with the header {_HEADER_TEXT}")
    if not _is_qrels_row(first[1]):
        _check_header(path, *first)
        return lines
    fix = f"add the header {_HEADER_TEXT} as the first line"
    warn_data(path, first[0], "no header line; the first line is read as a judgement", fix)
    return itertools.chain([first], lines)


def _is_qrels_row(line: str) -> bool:
    cells = line.split("\t")
    return len(cells) == 3 and looks_int(cells[2])


def _check_header(path: Path, no: int, line: str) -> None:
    if tuple(cell.strip() for cell in line.split("\t")) == QRELS_HEADER:
        return
    words = line.split()
    fix = f"make the first line the header {_HEADER_TEXT}"
    if len(words) == 4:
        fix += " (a 'qid 0 docid rel' file is TREC qrels: read it with load_trec_qrels)"
    elif len(words) == 3:
        fix += ", and separate the columns by tabs, not spaces"
    raise DataError(path, no, f"wrong header {line!r}", fix)


def available_splits(data_dir: PathLike) -> list[str]:
    """The splits of a BEIR folder: the names of its ``qrels/*.tsv`` files, sorted.

    Raises:
        DataError: ``data_dir`` is not an existing folder.

    Example:
        >>> import pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> (d / "qrels").mkdir()
        >>> for split in ("test", "dev"):
        ...     _ = (d / "qrels" / f"{split}.tsv").write_text("query-id\\tcorpus-id\\tscore\\n")
        >>> available_splits(d)
        ['dev', 'test']
    """
    folder = _require_dir(data_dir)
    qrels_dir = folder / "qrels"
    if not qrels_dir.is_dir():
        return []
    return sorted(f.stem for f in qrels_dir.glob("*.tsv") if f.is_file())


def load_beir(data_dir: PathLike, split: str) -> tuple[list[Doc], list[Query], Qrels]:
    """Load a BEIR folder for one split, checking the qrels against the corpus and queries.

    Args:
        data_dir: The folder holding ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/``.
        split: The split to evaluate, e.g. ``"test"`` (see :func:`available_splits`).

    Returns:
        All documents; only the queries judged in this split, in file order; the qrels.

    Raises:
        DataError: A missing folder, file or split (the fix lists the splits that exist), or
            any defect listed in :func:`iter_corpus`, :func:`load_queries`, :func:`load_qrels`.

    Example:
        >>> import pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "corpus.jsonl").write_text('{"_id": "1", "text": "Cats eat fish."}\\n')
        >>> _ = (d / "queries.jsonl").write_text('{"_id": "1", "text": "cats"}\\n'
        ...                                      '{"_id": "2", "text": "dogs"}\\n')
        >>> (d / "qrels").mkdir()
        >>> _ = (d / "qrels" / "test.tsv").write_text("query-id\\tcorpus-id\\tscore\\n1\\t1\\t1\\n")
        >>> docs, queries, qrels = load_beir(d, "test")
        >>> [q.id for q in queries], qrels
        (['1'], {'1': {'1': 1}})
    """
    folder = _require_dir(data_dir)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = available_splits(folder)
        fix = f"use a split that exists: {', '.join(splits)}" if splits else _BEIR_FIX
        raise DataError(qrels_path, None, f"no qrels for split {split!r}", fix)
    docs = load_corpus(folder / "corpus.jsonl")
    queries = load_queries(folder / "queries.jsonl")
    qrels = load_qrels(qrels_path, {q.id for q in queries}, {doc.id for doc in docs})
    return docs, [q for q in queries if q.id in qrels], qrels


def _require_dir(data_dir: PathLike) -> Path:
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(folder, None, "BEIR folder not found", _BEIR_FIX)
    return folder


def _json_object(path: Path, no: int, line: str, example: str) -> dict[str, Any]:
    fix = f"write one JSON object per line, like {example}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(path, no, f"malformed JSON ({e.msg} at column {e.colno})", fix) from None
    except RecursionError:
        raise DataError(path, no, "JSON nested too deeply to be read", fix) from None
    except ValueError as e:  # an integer of more than sys.get_int_max_str_digits() digits
        problem = f"unreadable JSON ({str(e).split(';')[0]})"
        fix = 'write long numbers as strings, like "_id": "123"'
        raise DataError(path, no, problem, fix) from None
    if not isinstance(obj, dict):
        raise DataError(path, no, f"expected a JSON object, got {_kind(obj)}", fix)
    return obj


def _id_field(path: Path, no: int, obj: dict[str, Any], what: str, example: str) -> str:
    value = obj.get("_id")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        keys = ", ".join(map(repr, obj)) or "none"
        problem = f'missing or empty "_id" (keys on this line: {keys})'
        raise DataError(path, no, problem, f'give every line a non-empty "_id", like {example}')
    if not isinstance(value, str):
        problem = f'"_id" must be a string or a whole number, got {_kind(value)}'
        raise DataError(path, no, problem, 'write the id as a string, like "_id": "d1"')
    return require_id(path, no, value, what)


def _text_field(path: Path, no: int, obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    text = "" if value is None else _as_text(value)
    if text is None:
        problem = f'"{key}" must be a string, got {_kind(value)}'
        raise DataError(path, no, problem, f'write "{key}" as a JSON string')
    return require_text(path, no, text, f'"{key}"')


def _answers(path: Path, no: int, obj: dict[str, Any]) -> tuple[str, ...]:
    value = obj.get("answers")
    metadata = obj.get("metadata")
    if value is None and isinstance(metadata, dict):
        value = metadata.get("answers")
    if value is None:
        return ()
    texts = [_as_text(item) for item in value] if isinstance(value, list) else [None]
    if None in texts:
        is_list = isinstance(value, list)
        got = f"a list holding {_kind(value[texts.index(None)])}" if is_list else _kind(value)
        problem = f'"answers" must be a list of strings, got {got}'
        raise DataError(path, no, problem, 'write the answers as a JSON list: "answers": ["Paris"]')
    return tuple(require_text(path, no, text, '"answers"') for text in texts if text is not None)


def _as_text(value: object) -> str | None:
    """``value`` as a string if that is harmless (strings and numbers), else ``None``."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _kind(value: object) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return _JSON_KINDS.get(type(value), "a JSON object")
