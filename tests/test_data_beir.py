"""Tests of ar2.data.beir: BEIR folders and every defect the loaders report."""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path

import pytest

from ar2.data import (
    MAX_GRADE,
    MIN_GRADE,
    available_splits,
    iter_corpus,
    load_beir,
    load_corpus,
    load_qrels,
    load_queries,
)
from ar2.errors import DataError, DataWarning
from ar2.types import Doc, Query
from conftest import check_error

SCIFACT = Path(__file__).resolve().parents[1] / "data" / "scifact"
HEADER = "query-id\tcorpus-id\tscore\n"


def jsonl(*objs: object) -> str:
    return "".join(json.dumps(obj) + "\n" for obj in objs)


def write_beir(root: Path, corpus: str, queries: str, **qrels: str) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(corpus, encoding="utf-8")
    (root / "queries.jsonl").write_text(queries, encoding="utf-8")
    for split, text in qrels.items():
        (root / "qrels" / f"{split}.tsv").write_text(text, encoding="utf-8")
    return root


CORPUS = jsonl(
    {"_id": "d1", "title": "Cats", "text": "Cats eat fish."},
    {"_id": "d2", "title": "Dogs", "text": "Dogs bark."},
    {"_id": "d3", "title": "", "text": "Birds sing."},
)
QUERIES = jsonl(
    {"_id": "q1", "text": "what do cats eat"},
    {"_id": "q2", "text": "do dogs bark"},
    {"_id": "q3", "text": "do birds sing"},
)


@pytest.fixture
def beir(tmp_path: Path) -> Path:
    test = HEADER + "q2\td2\t1\nq1\td1\t1\n"
    return write_beir(tmp_path / "ds", CORPUS, QUERIES, test=test, train=HEADER + "q3\td3\t1\n")


# --- the happy path ---------------------------------------------------------------------------


def test_load_beir_returns_judged_queries_in_file_order(beir: Path) -> None:
    docs, queries, qrels = load_beir(beir, "test")
    assert docs[0] == Doc("d1", "Cats eat fish.", "Cats")
    assert len(docs) == 3
    assert [q.id for q in queries] == ["q1", "q2"]
    assert qrels == {"q2": {"d2": 1}, "q1": {"d1": 1}}


def test_available_splits(beir: Path) -> None:
    assert available_splits(beir) == ["test", "train"]


def test_query_with_two_relevant_docs_keeps_both(tmp_path: Path) -> None:
    p = tmp_path / "test.tsv"
    p.write_text(HEADER + "q1\td1\t1\nq1\td2\t1\nq2\td1\t1\n")
    assert load_qrels(p) == {"q1": {"d1": 1, "d2": 1}, "q2": {"d1": 1}}


def test_graded_qrels_keep_grades(tmp_path: Path) -> None:
    p = tmp_path / "test.tsv"
    p.write_text(HEADER + "q1\td1\t2\nq1\td2\t0\nq1\td3\t1\nq2\td1\t-1\n")
    assert load_qrels(p) == {"q1": {"d1": 2, "d2": 0, "d3": 1}, "q2": {"d1": -1}}


def test_int_ids_become_str(tmp_path: Path) -> None:
    corpus = jsonl({"_id": 10, "title": "T", "text": "x"}, {"_id": 11, "text": 42})
    queries = jsonl({"_id": 7, "text": "x"})
    root = write_beir(tmp_path / "ds", corpus, queries, test=HEADER + "7\t10\t1\n")
    docs, queries_, qrels = load_beir(root, "test")
    assert [d.id for d in docs] == ["10", "11"]
    assert docs[1].text == "42"
    assert queries_ == [Query("7", "x")]
    assert qrels == {"7": {"10": 1}}
    assert all(isinstance(i, str) for i in [*qrels, *qrels["7"]])


def test_query_id_equal_to_doc_id_survives(tmp_path: Path) -> None:
    corpus = jsonl({"_id": "1", "text": "a"}, {"_id": "2", "text": "b"})
    queries = jsonl({"_id": "1", "text": "a?"}, {"_id": "2", "text": "b?"})
    root = write_beir(tmp_path / "ds", corpus, queries, test=HEADER + "1\t1\t1\n2\t1\t1\n")
    docs, queries_, qrels = load_beir(root, "test")
    assert [d.id for d in docs] == ["1", "2"]
    assert [q.id for q in queries_] == ["1", "2"]
    assert qrels == {"1": {"1": 1}, "2": {"1": 1}}


def test_answers_from_top_level_or_metadata(tmp_path: Path) -> None:
    p = tmp_path / "queries.jsonl"
    p.write_text(
        jsonl(
            {"_id": "q1", "text": "capital of France?", "answers": ["Paris", 1789]},
            {"_id": "q2", "text": "who?", "metadata": {"answers": ["Ada"]}},
            {"_id": "q3", "text": "none", "metadata": {}},
        )
    )
    assert [q.answers for q in load_queries(p)] == [("Paris", "1789"), ("Ada",), ()]


def test_bom_blank_lines_crlf_and_line_separators(tmp_path: Path) -> None:
    p = tmp_path / "corpus.jsonl"
    line1 = '{"_id": "d1", "text": "a\u2028b"}\r\n'
    p.write_bytes(b"\xef\xbb\xbf" + line1.encode() + b"\n   \n" + b'{"_id": "d2", "text": "c"}')
    assert load_corpus(p) == [Doc("d1", "a\u2028b"), Doc("d2", "c")]


def test_iter_corpus_is_a_lazy_generator(tmp_path: Path) -> None:
    p = tmp_path / "corpus.jsonl"
    p.write_text(jsonl({"_id": "d1", "text": "a"}, {"_id": "d2", "text": "b"}) + "{broken\n")
    docs = iter_corpus(p)
    assert next(docs).id == "d1"
    assert next(docs).id == "d2"  # line 3 is broken, yet lines 1-2 come out first
    with pytest.raises(DataError) as err:
        next(docs)
    check_error(err, "corpus.jsonl", 3)
    assert inspect.isgenerator(docs)


def test_iter_corpus_missing_file_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        iter_corpus(tmp_path / "corpus.jsonl")
    check_error(err, "corpus.jsonl", None)


def test_empty_docs_warn_once_with_count_and_lines(tmp_path: Path) -> None:
    p = tmp_path / "corpus.jsonl"
    empties = [{"_id": f"e{i}", "title": "", "text": " "} for i in range(7)]
    p.write_text(jsonl({"_id": "d1", "text": "a"}, *empties))
    with pytest.warns(DataWarning) as record:
        docs = load_corpus(p)
    assert len(docs) == 8  # empty documents are kept
    data_warnings = [w for w in record if issubclass(w.category, DataWarning)]
    assert len(data_warnings) == 1
    msg = str(data_warnings[0].message)
    assert "corpus.jsonl:2:" in msg and "7 empty" in msg and "2, 3, 4, 5, 6, ..." in msg
    assert "Fix:" in msg


def test_real_scifact_loads_without_error_or_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert available_splits(SCIFACT) == ["test", "train"]
        docs, train_queries, train_qrels = load_beir(SCIFACT, "train")
        _, test_queries, test_qrels = load_beir(SCIFACT, "test")
    assert len(docs) == 5183
    assert len(train_queries) == len(train_qrels) == 809
    assert len(test_queries) == len(test_qrels) == 300
    assert sum(map(len, test_qrels.values())) == 339
    assert not {q.id for q in train_queries} & {q.id for q in test_queries}


# --- corpus and query defects: DataError naming file, line and fix ---------------------------

GOOD = '{"_id": "d1", "text": "a"}\n'


@pytest.mark.parametrize(
    ("line2", "fragment"),
    [
        ('{"_id": "d2", "text": "b"', "malformed JSON"),
        ('["d2", "b"]', "expected a JSON object, got a JSON array"),
        ('"just a string"', "expected a JSON object, got a string"),
        ('{"id": "d2", "contents": "b"}', "missing or empty \"_id\" (keys on this line: 'id'"),
        ('{"_id": "  ", "text": "b"}', 'missing or empty "_id"'),
        ('{"_id": null, "text": "b"}', 'missing or empty "_id"'),
        ('{"_id": ["d2"], "text": "b"}', '"_id" must be a string or a whole number'),
        ('{"_id": 2.5, "text": "b"}', '"_id" must be a string or a whole number'),
        ('{"_id": true, "text": "b"}', '"_id" must be a string or a whole number'),
        ('{"_id": "d2", "text": ["b"]}', '"text" must be a string'),
        ('{"_id": "d2", "title": {"t": 1}, "text": "b"}', '"title" must be a string'),
        ('{"_id": "d1", "text": "again"}', "duplicate document id 'd1' (first on line 1)"),
        ('{"_id": 1, "text": "b"}\n{"_id": "1", "text": "c"}', "duplicate document id '1'"),
    ],
    ids=lambda v: v[:20] if isinstance(v, str) else v,
)
def test_corpus_defect(tmp_path: Path, line2: str, fragment: str) -> None:
    p = tmp_path / "corpus.jsonl"
    p.write_text(GOOD + line2 + "\n")
    line = 3 if "\n" in line2 else 2
    with pytest.raises(DataError) as err:
        load_corpus(p)
    assert fragment in check_error(err, "corpus.jsonl", line)


def test_duplicate_doc_id_names_both_lines(tmp_path: Path) -> None:
    p = tmp_path / "corpus.jsonl"
    p.write_text(GOOD + '{"_id": "d2", "text": "b"}\n\n' + '{"_id": "d2", "text": "c"}\n')
    with pytest.raises(DataError) as err:
        load_corpus(p)
    msg = check_error(err, "corpus.jsonl", 4)
    assert "first on line 2" in msg and "line 2 or line 4" in msg


def test_non_utf8_byte(tmp_path: Path) -> None:
    p = tmp_path / "corpus.jsonl"
    p.write_bytes(GOOD.encode() + '{"_id": "d2", "text": "café"}\n'.encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_corpus(p)
    assert "invalid UTF-8 byte 0xe9" in check_error(err, "corpus.jsonl", 2)


@pytest.mark.parametrize(
    ("line2", "fragment"),
    [
        ('{"_id": "q2", "text": ""}', "query 'q2' has empty text"),
        ('{"_id": "q2", "text": "   "}', "query 'q2' has empty text"),
        ('{"_id": "q2"}', "query 'q2' has empty text"),
        ('{"_id": "q1", "text": "again"}', "duplicate query id 'q1' (first on line 1)"),
        ('{"_id": "q2", "text": "b", "answers": "Paris"}', '"answers" must be a list'),
        ('{"_id": "q2", "text": "b", "answers": [["Paris"]]}', '"answers" must be a list'),
        ('{"text": "b"}', 'missing or empty "_id"'),
        ("{'_id': 'q2'}", "malformed JSON"),
    ],
    ids=lambda v: v[:20] if isinstance(v, str) else v,
)
def test_query_defect(tmp_path: Path, line2: str, fragment: str) -> None:
    p = tmp_path / "queries.jsonl"
    p.write_text('{"_id": "q1", "text": "a"}\n' + line2 + "\n")
    with pytest.raises(DataError) as err:
        load_queries(p)
    assert fragment in check_error(err, "queries.jsonl", 2)


# --- qrels defects ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("qid\tdocid\tscore\nq1\td1\t1\n", 1, "wrong header"),
        ("q1 0 d1 1\n", 1, "load_trec_qrels"),
        ("q1 d1 1\n", 1, "tabs, not spaces"),
        (HEADER + "q1\td1\t1.5\n", 2, "relevance grade '1.5' is not a whole number"),
        (HEADER + "q1\td1\tyes\n", 2, "relevance grade 'yes' is not a whole number"),
        (HEADER + "q1\td1\n", 2, "expected 3 tab-separated columns, got 2"),
        (HEADER + "q1\td1\t1\textra\n", 2, "expected 3 tab-separated columns, got 4"),
        (HEADER + "q1 d1 1\n", 2, "this line uses spaces, not tabs"),
        (HEADER + "\td1\t1\n", 2, "empty query id"),
        (HEADER + "q1\td1\t1\nq2\td1\t1\nq1\td1\t0\n", 4, "duplicate judgement"),
        (HEADER + "q1\td1\t1\nq9\td1\t1\n", 3, "query id 'q9' is not in the queries"),
        (HEADER + "q1\td9\t1\n", 2, "document id 'd9' is not in the corpus"),
    ],
    ids=[
        "wrong-header",
        "trec-file",
        "space-separated",
        "float-grade",
        "word-grade",
        "two-columns",
        "four-columns",
        "spaces",
        "empty-qid",
        "duplicate-row",
        "unknown-query",
        "unknown-doc",
    ],
)
def test_qrels_defect(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    p = tmp_path / "test.tsv"
    p.write_text(text)
    with pytest.raises(DataError) as err:
        load_qrels(p, query_ids={"q1", "q2"}, doc_ids=["d1", "d2"])
    assert fragment in check_error(err, "test.tsv", line)


def test_duplicate_qrels_row_names_both_lines(tmp_path: Path) -> None:
    p = tmp_path / "test.tsv"
    p.write_text(HEADER + "q1\td1\t1\nq1\td1\t1\n")
    with pytest.raises(DataError) as err:
        load_qrels(p)
    assert "first on line 2" in check_error(err, "test.tsv", 3)


@pytest.mark.parametrize("text", ["", "\n\n", HEADER])
def test_qrels_without_judgements(tmp_path: Path, text: str) -> None:
    p = tmp_path / "test.tsv"
    p.write_text(text)
    with pytest.raises(DataError) as err:
        load_qrels(p)
    check_error(err, "test.tsv", None)


def test_missing_qrels_header_warns_and_keeps_the_row(tmp_path: Path) -> None:
    p = tmp_path / "test.tsv"
    p.write_text("q1\td1\t1\nq1\td2\t2\n")
    with pytest.warns(DataWarning, match=r"test\.tsv:1: no header line.*Fix:"):
        assert load_qrels(p) == {"q1": {"d1": 1, "d2": 2}}


def test_load_beir_checks_qrels_against_corpus(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "ds", CORPUS, QUERIES, test=HEADER + "q1\td1\t1\nq1\tnope\t1\n")
    with pytest.raises(DataError) as err:
        load_beir(root, "test")
    assert "document id 'nope' is not in the corpus" in check_error(err, "test.tsv", 3)


# --- missing files and folders ----------------------------------------------------------------


def test_missing_split_lists_the_splits_that_exist(beir: Path) -> None:
    with pytest.raises(DataError) as err:
        load_beir(beir, "dev")
    msg = check_error(err, "dev.tsv", None)
    assert "no qrels for split 'dev'" in msg and "test, train" in msg


def test_missing_folder(tmp_path: Path) -> None:
    for call in (lambda: load_beir(tmp_path / "nope", "test"), lambda: available_splits("x/y")):
        with pytest.raises(DataError) as err:
            call()
        assert "corpus.jsonl, queries.jsonl and qrels/<split>.tsv" in check_error(err, "", None)


@pytest.mark.parametrize("name", ["corpus.jsonl", "queries.jsonl"])
def test_missing_file(beir: Path, name: str) -> None:
    (beir / name).unlink()
    with pytest.raises(DataError) as err:
        load_beir(beir, "test")
    assert "file not found" in check_error(err, name, None)


def test_folder_without_qrels_has_no_splits(tmp_path: Path) -> None:
    assert available_splits(tmp_path) == []


# --- ids a line-based file cannot carry, texts UTF-8 cannot carry ------------------------------

# every character str.splitlines() splits on, tab and space, other whitespace, control
# characters (Cc) and a lone surrogate; each is refused inside an id where the id is read
LINE_BREAKS = ["\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
BAD_ID_CHARS = [
    *LINE_BREAKS,
    *["\t", " ", "\xa0", "\u3000", "\x1f"],  # whitespace
    *["\x00", "\x07", "\x1b", "\x7f", "\x9f"],  # control characters
    "\ud800",  # a lone surrogate (a JSON "\ud800" escape)
]
BAD_ID_IDS = [f"U+{ord(c):04X}" for c in BAD_ID_CHARS]


@pytest.mark.parametrize("char", BAD_ID_CHARS, ids=BAD_ID_IDS)
@pytest.mark.parametrize("name", ["corpus.jsonl", "queries.jsonl"])
def test_jsonl_id_with_a_bad_character_is_refused_where_read(
    tmp_path: Path, name: str, char: str
) -> None:
    p = tmp_path / name
    p.write_text(jsonl({"_id": "x1", "text": "a"}, {"_id": f"x{char}2", "text": "b"}))
    load = load_corpus if name == "corpus.jsonl" else load_queries
    with pytest.raises(DataError) as err:
        load(p)
    msg = check_error(err, name, 2)
    assert "id 'x" in msg and " at character 2" in msg and "whitespace, line breaks" in msg
    assert "\n" not in msg and msg.isprintable()  # one line, whatever the id holds


@pytest.mark.parametrize(
    "char", [c for c in BAD_ID_CHARS if c not in "\n\t\ud800"], ids=lambda c: f"U+{ord(c):04X}"
)
@pytest.mark.parametrize("column", [0, 1])
def test_qrels_id_with_a_bad_character_is_refused_where_read(
    tmp_path: Path, char: str, column: int
) -> None:
    p = tmp_path / "test.tsv"
    cells = ["q1", "d1", "1"]
    cells[column] = f"{cells[column][0]}{char}1"
    p.write_bytes((HEADER + "q1\td1\t1\n" + "\t".join(cells) + "\n").encode())
    with pytest.raises(DataError) as err:
        load_qrels(p)
    msg = check_error(err, "test.tsv", 3)
    assert f"{'query' if column == 0 else 'document'} id" in msg and "at character 2" in msg


def test_surrounding_whitespace_of_an_id_is_still_stripped(tmp_path: Path) -> None:
    p = tmp_path / "corpus.jsonl"
    p.write_text(jsonl({"_id": " d1\t", "text": "a"}, {"_id": "\u3000d2\u2028", "text": "b"}))
    assert [d.id for d in load_corpus(p)] == ["d1", "d2"]
    q = tmp_path / "test.tsv"
    q.write_text(HEADER + " q1 \t d1 \t1\n")
    assert load_qrels(q) == {"q1": {"d1": 1}}


@pytest.mark.parametrize(
    ("name", "line2", "field"),
    [
        ("corpus.jsonl", '{"_id": "d2", "text": "a \\ud800 b"}', '"text" holds a lone surrogate'),
        ("corpus.jsonl", '{"_id": "d2", "title": "\\udfff", "text": "b"}', '"title" holds'),
        ("queries.jsonl", '{"_id": "q2", "text": "why \\udc00"}', '"text" holds a lone surrogate'),
        ("queries.jsonl", '{"_id": "q2", "text": "b", "answers": ["\\ud83d"]}', '"answers" holds'),
    ],
    ids=["text", "title", "query", "answers"],
)
def test_text_with_a_lone_surrogate_is_refused(
    tmp_path: Path, name: str, line2: str, field: str
) -> None:
    p = tmp_path / name
    p.write_text('{"_id": "x1", "text": "a \\ud83d\\ude00 pair is fine"}\n' + line2 + "\n")
    load = load_corpus if name == "corpus.jsonl" else load_queries
    with pytest.raises(DataError) as err:
        load(p)
    assert field in check_error(err, name, 2)


# --- JSON that json.loads cannot read ----------------------------------------------------------

DIGITS = "1" * 5000  # past Python's int_max_str_digits (4300)


@pytest.mark.parametrize(
    ("line2", "fragment"),
    [
        ("[" * 100_000, "nested too deeply"),
        ('{"_id": "d2", "text": "b", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}", "deeply"),
        ('{"_id": ' + DIGITS + ', "text": "b"}', "5000 digits"),
        ('{"_id": "d2", "text": ' + DIGITS + "}", "5000 digits"),
        ('{"_id": "d2", "text": "b", "n": -' + DIGITS + "}", "5000 digits"),
    ],
    ids=["deep-array", "deep-field", "huge-id", "huge-text", "huge-field"],
)
@pytest.mark.parametrize("name", ["corpus.jsonl", "queries.jsonl"])
def test_json_beyond_pythons_limits_is_a_data_error(
    tmp_path: Path, name: str, line2: str, fragment: str
) -> None:
    p = tmp_path / name
    p.write_text('{"_id": "x1", "text": "a"}\n' + line2 + "\n")
    load = load_corpus if name == "corpus.jsonl" else load_queries
    with pytest.raises(DataError) as err:
        load(p)
    msg = check_error(err, name, 2)
    assert fragment in msg and len(msg) < 400


# --- relevance grades --------------------------------------------------------------------------


def test_grade_range_is_exported_and_its_ends_are_accepted(tmp_path: Path) -> None:
    assert (MIN_GRADE, MAX_GRADE) == (-1000, 1000)
    p = tmp_path / "test.tsv"
    p.write_text(HEADER + f"q1\td1\t{MAX_GRADE}\nq1\td2\t{MIN_GRADE}\nq2\td1\t+4\nq2\td2\t-2\n")
    assert load_qrels(p) == {"q1": {"d1": 1000, "d2": -1000}, "q2": {"d1": 4, "d2": -2}}


@pytest.mark.parametrize("grade", ["4294967297", "1001", "-1001", "2147483648", DIGITS])
def test_grade_outside_the_range_is_refused(tmp_path: Path, grade: str) -> None:
    p = tmp_path / "test.tsv"
    p.write_text(HEADER + "q1\td1\t1\n" + f"q1\td2\t{grade}\n")
    with pytest.raises(DataError) as err:
        load_qrels(p)
    msg = check_error(err, "test.tsv", 3)
    assert "relevance grade" in msg and "from -1000 to 1000" in msg and len(msg) < 400


@pytest.mark.parametrize("rows", ["q1\td1\t0\n", "q1\td1\t0\nq2\td2\t-1\nq2\td1\t0\n"])
def test_qrels_without_a_relevant_judgement_are_refused(tmp_path: Path, rows: str) -> None:
    p = tmp_path / "test.tsv"
    p.write_text(HEADER + rows)
    with pytest.raises(DataError) as err:
        load_qrels(p)
    msg = check_error(err, "test.tsv", None)
    assert "no relevant judgement" in msg and "grade of 1 or more" in msg


# --- a corpus without text ---------------------------------------------------------------------


def test_corpus_whose_every_document_is_empty_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "corpus.jsonl"
    p.write_text(jsonl(*({"_id": f"d{i}", "contents": f"text {i}"} for i in range(3))))
    docs = iter_corpus(p)
    assert [next(docs).id for _ in range(3)] == ["d0", "d1", "d2"]  # still streamed
    with pytest.raises(DataError) as err:
        next(docs)  # the end of the file
    msg = check_error(err, "corpus.jsonl", None)
    assert "all 3 document(s) are empty" in msg
    assert "line 1 has the keys '_id', 'contents'" in msg and '"title" and "text"' in msg
    with pytest.raises(DataError, match="all 3 document"):
        load_corpus(p)


def test_corpus_with_some_text_still_only_warns(tmp_path: Path) -> None:
    p = tmp_path / "corpus.jsonl"
    p.write_text(jsonl({"_id": "d1", "title": "", "text": ""}, {"_id": "d2", "title": "T"}))
    with pytest.warns(DataWarning, match="1 empty"):
        assert len(load_corpus(p)) == 2
