"""MS MARCO-style TSV files and TREC qrels and run files.

* collection: ``pid<TAB>text`` or ``pid<TAB>text<TAB>title`` (a DPR-style ``id text title``
  header on line 1 is skipped);
* queries: ``qid<TAB>text``;
* TREC qrels: ``qid 0 docid rel`` (whitespace-separated; the second column is ignored);
* TREC run: ``qid Q0 docid rank score tag``.

Ids are always ``str``, stripped of surrounding whitespace; an id holding whitespace, a line
break, a control character or a lone surrogate is refused where it is read. Every defect raises
:class:`ar2.errors.DataError` naming the file, the line and the fix.

Example:
    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "collection.tsv").write_text("0\\tCats eat fish.\\n1\\tDogs bark.\\n")
    >>> _ = (d / "queries.tsv").write_text("100\\twhat do cats eat\\n")
    >>> _ = (d / "qrels.txt").write_text("100 0 0 1\\n")
    >>> files = d / "collection.tsv", d / "queries.tsv", d / "qrels.txt"
    >>> docs, queries, qrels = load_msmarco(*files)
    >>> len(docs), queries, qrels
    (2, [Query(id='100', text='what do cats eat', answers=())], {'100': {'0': 1}})
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from pathlib import Path

from ar2._io import atomic_write_text
from ar2.data._lines import (
    ID_RULE,
    PathLike,
    QrelsBuilder,
    id_problem,
    iter_lines,
    parse_float,
    parse_int,
    require_file,
    require_id,
    split_columns,
    stream_docs,
    unique_ids,
)
from ar2.errors import DataError
from ar2.types import Doc, Hit, Qrels, Query, Run

__all__ = [
    "iter_collection_tsv",
    "load_collection_tsv",
    "load_msmarco",
    "load_queries_tsv",
    "load_trec_qrels",
    "read_run",
    "write_run",
]

_DOC_HEADER = ({"id", "pid", "docid", "doc_id", "_id"}, {"text", "passage", "contents", "body"})
_QUERY_HEADER = ({"id", "qid", "query_id", "query-id", "_id"}, {"text", "query", "question"})
_RUN_LAYOUT = "'qid Q0 docid rank score tag'"
_NO_TEXT_FIX = "put each passage's text in the second column: pid<TAB>text[<TAB>title]"


def iter_collection_tsv(path: PathLike) -> Iterator[Doc]:
    """Stream the passages of an MS MARCO-style ``collection.tsv``.

    Only the ids seen so far are kept (to catch duplicates), never the texts. Empty passages
    are kept and reported by one warning once the whole file has been read; if every passage is
    empty, the end of the file raises instead.

    Args:
        path: A ``pid<TAB>text`` or ``pid<TAB>text<TAB>title`` file.

    Yields:
        One :class:`~ar2.types.Doc` per non-blank line, in file order.

    Raises:
        DataError: Missing file, bad UTF-8, wrong column count, empty or duplicate id, an id
            holding whitespace or a control character, every passage empty.

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "collection.tsv"
        >>> _ = p.write_text("7\\tCats eat fish.\\tCats\\n")
        >>> next(iter_collection_tsv(p))
        Doc(id='7', text='Cats eat fish.', title='Cats')
    """
    p = require_file(path, "collection", "check the path to the pid<TAB>text collection file")
    return stream_docs(p, _parse_collection, no_text_fix=lambda: _NO_TEXT_FIX)


def _parse_collection(path: Path) -> Iterator[tuple[int, Doc]]:
    for index, (no, line) in enumerate(iter_lines(path)):
        cells = split_columns(path, no, line, (2, 3), "pid, text[, title]")
        if index == 0 and _is_header(cells, _DOC_HEADER):
            continue
        title = cells[2] if len(cells) == 3 else ""
        yield no, Doc(require_id(path, no, cells[0], "passage"), cells[1], title)


def load_collection_tsv(path: PathLike) -> list[Doc]:
    """Read a whole ``collection.tsv`` into a list (see :func:`iter_collection_tsv`).

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "collection.tsv"
        >>> _ = p.write_text("id\\ttext\\ttitle\\n1\\tCats eat fish.\\tCats\\n2\\tDogs bark.\\t\\n")
        >>> load_collection_tsv(p)[1]
        Doc(id='2', text='Dogs bark.', title='')
    """
    return list(iter_collection_tsv(path))


def load_queries_tsv(path: PathLike) -> list[Query]:
    """Read an MS MARCO-style ``queries.tsv`` (``qid<TAB>text``).

    Raises:
        DataError: Missing file, bad UTF-8, wrong column count, empty or duplicate id, an id
            holding whitespace or a control character, empty text.

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "queries.tsv"
        >>> _ = p.write_text("1\\twhat do cats eat\\n2\\tdo dogs bark\\n")
        >>> [q.text for q in load_queries_tsv(p)]
        ['what do cats eat', 'do dogs bark']
    """
    p = require_file(path, "queries", "check the path to the qid<TAB>text queries file")
    pairs = unique_ids(p, "query", _parse_queries(p), lambda: _parse_queries(p))
    return [query for _, query in pairs]


def _parse_queries(path: Path) -> Iterator[tuple[int, Query]]:
    for index, (no, line) in enumerate(iter_lines(path)):
        qid, text = split_columns(path, no, line, (2,), "qid, text")
        if index == 0 and _is_header([qid, text], _QUERY_HEADER):
            continue
        qid = require_id(path, no, qid, "query")
        if not text.strip():
            fix = "give every query a non-empty text, or delete the line"
            raise DataError(path, no, f"query {qid!r} has empty text", fix)
        yield no, Query(qid, text)


def _is_header(cells: list[str], names: tuple[set[str], set[str]]) -> bool:
    return cells[0].strip().lower() in names[0] and cells[1].strip().lower() in names[1]


def load_trec_qrels(
    path: PathLike,
    query_ids: Collection[str] | None = None,
    doc_ids: Collection[str] | None = None,
) -> Qrels:
    """Read TREC qrels: ``qid 0 docid rel`` per line, whitespace-separated, no header.

    Args:
        path: The qrels file (MS MARCO's ``qrels.dev.tsv`` has this shape too).
        query_ids: When given, every query id must be one of these.
        doc_ids: When given, every document id must be one of these.

    Returns:
        ``query_id -> {doc_id: grade}`` in file order, grades as given: whole numbers from
        :data:`~ar2.data.MIN_GRADE` (-1000) to :data:`~ar2.data.MAX_GRADE` (1000), where
        grades > 0 count as relevant.

    Raises:
        DataError: Missing file, wrong column count, a grade that is not a whole number from
            -1000 to 1000, an id holding a control character, duplicate (query, document) row,
            unknown query or document id, no judgements at all, no judgement with a grade > 0.

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "qrels.txt"
        >>> _ = p.write_text("q1 0 d1 2\\nq1 0 d2 1\\nq2 0 d1 0\\n")
        >>> load_trec_qrels(p)
        {'q1': {'d1': 2, 'd2': 1}, 'q2': {'d1': 0}}
    """
    p = require_file(path, "qrels", "check the path to the 'qid 0 docid rel' qrels file")
    builder = QrelsBuilder(p, query_ids, doc_ids)
    for no, line in iter_lines(p):
        layout = "'qid 0 docid rel'"
        if len(line.split("\t")) == 3:
            layout += " (a 3-column tab-separated file is BEIR qrels: read it with load_qrels)"
        qid, _, doc_id, grade = split_columns(p, no, line, (4,), layout, sep=None)
        builder.add(no, qid, doc_id, grade)
    return builder.result()


def read_run(path: PathLike) -> Run:
    """Read a TREC run file: ``qid Q0 docid rank score tag`` per line.

    Args:
        path: The run file. Queries may be in any order, and so may a query's lines.

    Returns:
        ``query_id -> hits`` sorted by descending score (ties: by rank, then by doc id).
        Queries keep the order of their first line.

    Raises:
        DataError: Missing file, bad UTF-8, wrong column count, an id holding a control
            character, non-integer rank, score that is not a number, a document listed twice
            for one query.

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "run.txt"
        >>> _ = p.write_text("q1 Q0 d2 2 0.5 bm25\\nq1 Q0 d1 1 1.5 bm25\\n")
        >>> read_run(p)
        {'q1': [Hit(doc_id='d1', score=1.5), Hit(doc_id='d2', score=0.5)]}
    """
    p = require_file(path, "run", f"check the path to the {_RUN_LAYOUT} run file")
    rows: dict[str, dict[str, tuple[float, int, int]]] = {}
    for no, line in iter_lines(p):
        qid, _, doc_id, rank, score, _tag = split_columns(p, no, line, (6,), _RUN_LAYOUT, None)
        qid, doc_id = require_id(p, no, qid, "query"), require_id(p, no, doc_id, "document")
        fix = "write the rank as a whole number (1 for the best hit)"
        entry = (-parse_float(p, no, score, "score"), parse_int(p, no, rank, "rank", fix), no)
        first = rows.setdefault(qid, {}).setdefault(doc_id, entry)[2]
        if first != no:
            problem = f"query {qid!r} lists document {doc_id!r} twice (first on line {first})"
            raise DataError(p, no, problem, f"keep one of line {first} and line {no}")
    return {
        qid: [Hit(doc_id, -neg) for doc_id, (neg, _, _) in sorted(hits.items(), key=_run_order)]
        for qid, hits in rows.items()
    }


def _run_order(item: tuple[str, tuple[float, int, int]]) -> tuple[float, int, str]:
    doc_id, (neg_score, rank, _) = item
    return neg_score, rank, doc_id


def write_run(run: Run, path: PathLike, tag: str = "ar2") -> None:
    """Write ``run`` as a TREC run file, atomically (the file appears whole or not at all).

    Each query's hits are written by descending score (ties keep their order) with ranks
    1..n. Scores are written with ``repr``, which round-trips every float64, hence every
    float32. Queries without hits write no line.

    Args:
        run: ``query_id -> hits``.
        path: The file to write; its folder is created if needed.
        tag: The run name in the last column: non-empty, no whitespace.

    Raises:
        ValueError: A bad ``tag``.
        DataError: An id that is empty or holds whitespace, a control character or a lone
            surrogate, a score that is NaN or infinite, a document listed twice for one query.

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "run.txt"
        >>> write_run({"q1": [Hit("d1", 2.0), Hit("d2", 0.25)]}, p, tag="bm25")
        >>> print(p.read_text(), end="")
        q1 Q0 d1 1 2.0 bm25
        q1 Q0 d2 2 0.25 bm25
    """
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"tag must be a non-empty word without whitespace, got {tag!r}")
    out = Path(path)
    lines: list[str] = []
    for qid, hits in run.items():
        _check_run_id(out, qid, "query")
        seen: set[str] = set()
        for hit in hits:
            _check_hit(out, qid, hit, seen)
        ranked = sorted(hits, key=lambda hit: -float(hit.score))
        lines.extend(
            f"{qid} Q0 {hit.doc_id} {rank} {float(hit.score)!r} {tag}\n"
            for rank, hit in enumerate(ranked, 1)
        )
    atomic_write_text(out, "".join(lines))


def _check_run_id(path: Path, value: object, what: str) -> None:
    why = id_problem(value) if isinstance(value, str) else "is not a string"
    if why is not None:
        problem = f"{what} id {value!r} cannot be written to a TREC run: it {why}"
        raise DataError(path, None, problem, f"use non-empty string ids: {ID_RULE}")


def _check_hit(path: Path, qid: str, hit: Hit, seen: set[str]) -> None:
    _check_run_id(path, hit.doc_id, "document")
    if not math.isfinite(float(hit.score)):
        problem = f"query {qid!r}, document {hit.doc_id!r} has score {hit.score!r}"
        raise DataError(path, None, problem, "give every hit a finite score")
    if hit.doc_id in seen:
        problem = f"query {qid!r} lists document {hit.doc_id!r} twice"
        raise DataError(path, None, problem, "keep each document once per query")
    seen.add(hit.doc_id)


def load_msmarco(
    collection: PathLike, queries: PathLike, qrels: PathLike
) -> tuple[list[Doc], list[Query], Qrels]:
    """Load MS MARCO-style files, checking every qrels id against the collection and queries.

    Args:
        collection: ``pid<TAB>text[<TAB>title]`` file (see :func:`iter_collection_tsv`).
        queries: ``qid<TAB>text`` file (see :func:`load_queries_tsv`).
        qrels: TREC qrels file (see :func:`load_trec_qrels`).

    Returns:
        All passages; only the queries that have judgements, in file order; the qrels.

    Raises:
        DataError: Any defect of the three files, including a qrels id that is not in the
            collection or the queries.

    Example:
        >>> import pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "c.tsv").write_text("1\\tCats eat fish.\\n")
        >>> _ = (d / "q.tsv").write_text("1\\tcats\\n")
        >>> _ = (d / "qrels.txt").write_text("1 0 2 1\\n")
        >>> load_msmarco(d / "c.tsv", d / "q.tsv", d / "qrels.txt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ar2.errors.DataError: ...qrels.txt:1: document id '2' is not in the corpus. Fix: ...
    """
    docs = load_collection_tsv(collection)
    judged_queries = load_queries_tsv(queries)
    judgements = load_trec_qrels(qrels, {q.id for q in judged_queries}, {d.id for d in docs})
    return docs, [q for q in judged_queries if q.id in judgements], judgements
