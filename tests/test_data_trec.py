"""Tests of ar2.data.trec: MS MARCO-style TSV files, TREC qrels and runs."""

from __future__ import annotations

import inspect
import math
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from ar2.data import (
    MAX_GRADE,
    MIN_GRADE,
    iter_collection_tsv,
    load_collection_tsv,
    load_msmarco,
    load_queries_tsv,
    load_trec_qrels,
    read_run,
    write_run,
)
from ar2.data._lines import id_problem
from ar2.errors import DataError, DataWarning
from ar2.types import Doc, Hit, Query
from conftest import check_error

Files = tuple[Path, Path, Path]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- collection -------------------------------------------------------------------------------


def test_collection_two_and_three_columns(tmp_path: Path) -> None:
    p = write(tmp_path / "collection.tsv", "0\tCats eat fish.\n1\tDogs bark.\tDogs\n\n2\tx\t\n")
    assert load_collection_tsv(p) == [
        Doc("0", "Cats eat fish."),
        Doc("1", "Dogs bark.", "Dogs"),
        Doc("2", "x"),
    ]


def test_collection_dpr_header_is_skipped(tmp_path: Path) -> None:
    p = write(tmp_path / "psgs.tsv", "id\ttext\ttitle\n1\tAaron is a prophet.\tAaron\n")
    assert load_collection_tsv(p) == [Doc("1", "Aaron is a prophet.", "Aaron")]


def test_collection_bom_and_crlf(tmp_path: Path) -> None:
    p = tmp_path / "collection.tsv"
    p.write_bytes(b"\xef\xbb\xbf1\ta\r\n2\tb\r\n")
    assert load_collection_tsv(p) == [Doc("1", "a"), Doc("2", "b")]


def test_iter_collection_is_a_lazy_generator(tmp_path: Path) -> None:
    p = write(tmp_path / "collection.tsv", "1\ta\n2\tb\nbroken line\n")
    docs = iter_collection_tsv(p)
    assert [next(docs).id, next(docs).id] == ["1", "2"]
    with pytest.raises(DataError) as err:
        next(docs)
    check_error(err, "collection.tsv", 3)
    assert inspect.isgenerator(docs)


def test_empty_passages_warn_once(tmp_path: Path) -> None:
    p = write(tmp_path / "collection.tsv", "1\ta\n2\t \n3\t\n")
    with pytest.warns(DataWarning) as record:
        assert len(load_collection_tsv(p)) == 3
    msgs = [str(w.message) for w in record if issubclass(w.category, DataWarning)]
    assert len(msgs) == 1
    assert "collection.tsv:2: 2 empty" in msgs[0] and "lines 2, 3)" in msgs[0]


@pytest.mark.parametrize(
    ("data", "line", "fragment"),
    [
        (b"1\ta\n2\n", 2, "expected 2 or 3 tab-separated columns, got 1"),
        (b"1\ta\n2\tb\tc\td\n", 2, "expected 2 or 3 tab-separated columns, got 4"),
        (b"1\ta\n2 b\n", 2, "this line uses spaces, not tabs"),
        (b"1\ta\n\tb\n", 2, "empty passage id"),
        (b"1\ta\n2\tb\n1\tc\n", 3, "duplicate document id '1' (first on line 1)"),
        (b"1\ta\n2\tcaf\xe9\n", 2, "invalid UTF-8 byte 0xe9"),
    ],
    ids=["one-column", "four-columns", "spaces", "empty-id", "duplicate", "latin-1"],
)
def test_collection_defect(tmp_path: Path, data: bytes, line: int, fragment: str) -> None:
    p = tmp_path / "collection.tsv"
    p.write_bytes(data)
    with pytest.raises(DataError) as err:
        load_collection_tsv(p)
    assert fragment in check_error(err, "collection.tsv", line)


# --- queries ----------------------------------------------------------------------------------


def test_queries_tsv(tmp_path: Path) -> None:
    p = write(tmp_path / "queries.tsv", "qid\tquery\n1\twhat do cats eat\n2\tdo dogs bark\n")
    assert load_queries_tsv(p) == [Query("1", "what do cats eat"), Query("2", "do dogs bark")]


@pytest.mark.parametrize(
    ("data", "line", "fragment"),
    [
        (b"1\ta\n2\tb\tc\n", 2, "expected 2 tab-separated columns, got 3"),
        (b"1\ta\n2\t  \n", 2, "query '2' has empty text"),
        (b"1\ta\n1\tb\n", 2, "duplicate query id '1' (first on line 1)"),
        (b"1\ta\n2\t\xff\n", 2, "invalid UTF-8 byte 0xff"),
    ],
    ids=["three-columns", "empty-text", "duplicate", "bad-byte"],
)
def test_queries_defect(tmp_path: Path, data: bytes, line: int, fragment: str) -> None:
    p = tmp_path / "queries.tsv"
    p.write_bytes(data)
    with pytest.raises(DataError) as err:
        load_queries_tsv(p)
    assert fragment in check_error(err, "queries.tsv", line)


# --- TREC qrels -------------------------------------------------------------------------------


def test_trec_qrels_graded_and_several_relevant(tmp_path: Path) -> None:
    p = write(tmp_path / "qrels.txt", "q1 0 d1 2\nq1 0 d2 1\nq2\t0\td1\t0\nq3 Q0 d3 -1\n")
    assert load_trec_qrels(p) == {"q1": {"d1": 2, "d2": 1}, "q2": {"d1": 0}, "q3": {"d3": -1}}


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("q1 0 d1 1\nq1 0 d2\n", 2, "expected 4 whitespace-separated columns, got 3"),
        ("query-id\tcorpus-id\tscore\n", 1, "read it with load_qrels"),
        ("q1 0 d1 1\nq1 0 d2 0.5\n", 2, "relevance grade '0.5' is not a whole number"),
        ("q1 0 d1 1\nq1 0 d1 0\n", 2, "duplicate judgement of query 'q1' and document 'd1'"),
        ("q1 0 d1 1\nq9 0 d1 1\n", 2, "query id 'q9' is not in the queries"),
        ("q1 0 d9 1\n", 1, "document id 'd9' is not in the corpus"),
    ],
    ids=["three-columns", "beir-file", "float-grade", "duplicate", "unknown-query", "unknown-doc"],
)
def test_trec_qrels_defect(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    p = write(tmp_path / "qrels.txt", text)
    with pytest.raises(DataError) as err:
        load_trec_qrels(p, query_ids={"q1"}, doc_ids={"d1", "d2"})
    assert fragment in check_error(err, "qrels.txt", line)


# --- runs -------------------------------------------------------------------------------------


def test_run_round_trip_is_identical(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scores = rng.standard_normal(50).astype(np.float32)
    run = {
        "q1": [Hit(f"d{i}", float(s)) for i, s in sorted(enumerate(scores), key=lambda x: -x[1])],
        "2": [Hit("a", 1.0), Hit("b", 1.0), Hit("c", -3.5e-12)],  # a tie keeps its order
        "q0": [Hit("x", 1e30)],
    }
    p = tmp_path / "runs" / "run.txt"
    write_run(run, p, tag="dense")
    back = read_run(p)
    assert back == run
    assert list(back) == ["q1", "2", "q0"]
    assert [np.float32(h.score) for h in back["q1"]] == sorted(scores, reverse=True)
    assert not [f for f in p.parent.iterdir() if f.name != "run.txt"]  # no temp file left


def test_write_run_sorts_and_ranks_from_one(tmp_path: Path) -> None:
    p = tmp_path / "run.txt"
    numpy_score = Hit("d3", np.float32(1.25))  # type: ignore[arg-type]
    write_run({"q1": [Hit("d1", 0.5), Hit("d2", 2.0), numpy_score]}, p)
    assert p.read_text().splitlines() == [
        "q1 Q0 d2 1 2.0 ar2",
        "q1 Q0 d3 2 1.25 ar2",
        "q1 Q0 d1 3 0.5 ar2",
    ]


def test_read_run_sorts_by_descending_score(tmp_path: Path) -> None:
    lines = ["q1 Q0 a 3 0.1 t", "q2 Q0 z 1 5 t", "q1 Q0 b 1 9.5 t", "q1 Q0 c 2 1e-3 t"]
    p = write(tmp_path / "run.txt", "\n".join(lines) + "\n")
    expected = {"q1": [Hit("b", 9.5), Hit("a", 0.1), Hit("c", 0.001)], "q2": [Hit("z", 5.0)]}
    assert read_run(p) == expected


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 0.4\n", 2, "expected 6 whitespace-separated columns, got 5"),
        ("q1 Q0 d1 one 0.5 t\n", 1, "rank 'one' is not a whole number"),
        ("q1 Q0 d1 1.0 0.5 t\n", 1, "rank '1.0' is not a whole number"),
        ("q1 Q0 d1 1 high t\n", 1, "score 'high' is not a number"),
        ("q1 Q0 d1 1 nan t\n", 1, "score 'nan' is not a number"),
        ("q1 Q0 d1 1 0.5 t\nq1 Q0 d1 2 0.4 t\n", 2, "lists document 'd1' twice (first on line 1)"),
    ],
    ids=["five-columns", "word-rank", "float-rank", "word-score", "nan-score", "duplicate"],
)
def test_run_defect(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    p = write(tmp_path / "run.txt", text)
    with pytest.raises(DataError) as err:
        read_run(p)
    assert fragment in check_error(err, "run.txt", line)


def test_read_run_non_utf8(tmp_path: Path) -> None:
    p = tmp_path / "run.txt"
    p.write_bytes(b"q1 Q0 d1 1 0.5 t\nq1 Q0 d\xe92 2 0.4 t\n")
    with pytest.raises(DataError) as err:
        read_run(p)
    check_error(err, "run.txt", 2)


@pytest.mark.parametrize(
    ("run", "fragment"),
    [
        ({"q 1": [Hit("d1", 1.0)]}, "query id 'q 1' cannot be written"),
        ({"q1": [Hit("", 1.0)]}, "document id '' cannot be written"),
        ({"q1": [Hit("d1", math.nan)]}, "has score nan"),
        ({"q1": [Hit("d1", math.inf)]}, "has score inf"),
        ({"q1": [Hit("d1", 1.0), Hit("d1", 0.5)]}, "lists document 'd1' twice"),
    ],
    ids=["space-in-qid", "empty-docid", "nan", "inf", "duplicate"],
)
def test_write_run_rejects_unwritable_runs(tmp_path: Path, run: dict, fragment: str) -> None:
    p = tmp_path / "run.txt"
    with pytest.raises(DataError) as err:
        write_run(run, p)
    assert fragment in check_error(err, "run.txt", None)
    assert not list(tmp_path.iterdir())  # nothing written


def test_write_run_rejects_bad_tag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tag"):
        write_run({"q1": [Hit("d1", 1.0)]}, tmp_path / "run.txt", tag="my run")


# --- MS MARCO ---------------------------------------------------------------------------------


@pytest.fixture
def msmarco(tmp_path: Path) -> Files:
    collection = write(tmp_path / "collection.tsv", "0\tCats eat fish.\n1\tDogs bark.\n")
    queries = write(tmp_path / "queries.tsv", "10\tcats\n11\tdogs\n1\tquery one\n")
    qrels = write(tmp_path / "qrels.tsv", "1\t0\t1\t1\n10\t0\t0\t1\n")
    return collection, queries, qrels


def test_load_msmarco(msmarco: Files) -> None:
    docs, queries, qrels = load_msmarco(*msmarco)
    assert [d.id for d in docs] == ["0", "1"]
    assert [q.id for q in queries] == ["10", "1"]  # judged queries only, file order
    assert qrels == {"1": {"1": 1}, "10": {"0": 1}}  # query id "1" equals doc id "1"


@pytest.mark.parametrize(
    ("row", "fragment"),
    [("12 0 0 1", "query id '12' is not in the queries"), ("10 0 5 1", "document id '5'")],
)
def test_load_msmarco_unknown_ids(msmarco: Files, row: str, fragment: str) -> None:
    collection, queries, qrels = msmarco
    qrels.write_text(qrels.read_text() + row + "\n")
    with pytest.raises(DataError) as err:
        load_msmarco(collection, queries, qrels)
    assert fragment in check_error(err, "qrels.tsv", 3)


def test_load_msmarco_missing_file(msmarco: Files) -> None:
    collection, queries, qrels = msmarco
    with pytest.raises(DataError) as err:
        load_msmarco(collection, queries.with_name("nope.tsv"), qrels)
    assert "queries file not found" in check_error(err, "nope.tsv", None)


# --- ids a line-based file or a TREC run cannot carry ------------------------------------------


def test_id_validator_refuses_exactly_whitespace_controls_and_surrogates() -> None:
    """Every code point: refused iff str.isspace, Unicode category Cc or a lone surrogate."""
    refused = [c for c in map(chr, range(sys.maxunicode + 1)) if id_problem(f"a{c}b")]
    expected = [
        c
        for c in map(chr, range(sys.maxunicode + 1))
        if c.isspace() or unicodedata.category(c) in ("Cc", "Cs")
    ]
    assert refused == expected
    splitters = {c for c in refused if len(f"a{c}b".splitlines()) > 1}
    assert splitters == set("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # all refused
    assert id_problem("") == "is empty" and id_problem("d\u200b1") is None  # U+200B is Cf


TSV_BAD_CHARS = [" ", "\xa0", "\u3000", "\v", "\f", "\x1c", "\x85", "\u2028", "\x00", "\x7f"]


@pytest.mark.parametrize("char", TSV_BAD_CHARS, ids=lambda c: f"U+{ord(c):04X}")
def test_tsv_id_with_whitespace_or_a_control_is_refused_where_read(
    tmp_path: Path, char: str
) -> None:
    # today an id with a space passes here and fails only when a run file is written
    for name, load in (("collection.tsv", load_collection_tsv), ("queries.tsv", load_queries_tsv)):
        p = write(tmp_path / name, f"1\ta\nx{char}2\tb\n")
        with pytest.raises(DataError) as err:
            load(p)
        msg = check_error(err, name, 2)
        assert "id 'x" in msg and "at character 2" in msg and "\n" not in msg


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\x9f"], ids=repr)
def test_trec_qrels_and_run_ids_with_a_control_are_refused(tmp_path: Path, char: str) -> None:
    qrels = write(tmp_path / "qrels.txt", f"q1 0 d1 1\nq1 0 d{char}2 1\n")
    with pytest.raises(DataError) as err:
        load_trec_qrels(qrels)
    assert "document id 'd" in check_error(err, "qrels.txt", 2)
    run = write(tmp_path / "run.txt", f"q1 Q0 d1 1 0.5 t\nq{char}1 Q0 d2 2 0.4 t\n")
    with pytest.raises(DataError) as err:
        read_run(run)
    assert "query id 'q" in check_error(err, "run.txt", 2)


@pytest.mark.parametrize("qid", ["q\x001", "q\u20281", "q\ud8001", "q\x851"], ids=repr)
def test_write_run_refuses_controls_and_line_breaks(tmp_path: Path, qid: str) -> None:
    with pytest.raises(DataError) as err:
        write_run({qid: [Hit("d1", 1.0)]}, tmp_path / "run.txt")
    assert "cannot be written to a TREC run" in check_error(err, "run.txt", None)
    assert not list(tmp_path.iterdir())


def test_huge_rank_is_a_data_error(tmp_path: Path) -> None:
    p = write(tmp_path / "run.txt", f"q1 Q0 d1 {'9' * 5000} 0.5 t\n")
    with pytest.raises(DataError) as err:
        read_run(p)
    msg = check_error(err, "run.txt", 1)
    assert "too many digits" in msg and len(msg) < 300


# --- relevance grades --------------------------------------------------------------------------


@pytest.mark.parametrize("grade", ["4294967297", "1001", "-1001", "9" * 5000])
def test_trec_qrels_grade_outside_the_range_is_refused(tmp_path: Path, grade: str) -> None:
    p = write(tmp_path / "qrels.txt", f"q1 0 d1 1\nq1 0 d2 {grade}\n")
    with pytest.raises(DataError) as err:
        load_trec_qrels(p)
    msg = check_error(err, "qrels.txt", 2)
    assert f"from {MIN_GRADE} to {MAX_GRADE}" in msg and len(msg) < 400


def test_trec_qrels_without_a_relevant_judgement_are_refused(tmp_path: Path) -> None:
    p = write(tmp_path / "qrels.txt", "q1 0 d1 0\nq2 0 d1 -1\n")
    with pytest.raises(DataError) as err:
        load_trec_qrels(p)
    assert "no relevant judgement: all 2 grade(s)" in check_error(err, "qrels.txt", None)


def test_collection_whose_every_passage_is_empty_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path / "collection.tsv", "1\t \n2\t\t\n")
    with pytest.raises(DataError) as err:
        load_collection_tsv(p)
    msg = check_error(err, "collection.tsv", None)
    assert "all 2 document(s) are empty" in msg and "second column" in msg
