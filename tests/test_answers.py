"""DPR answer matching (ar2.answers) and QA training: answer-bearing passages are no negatives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ar2.answers import answer_checker, answer_tokens, dpr_tokens, has_answer
from ar2.types import Query
from conftest import write_train_toy

# --- has_answer: DPR's string mode ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answers", "expected"),
    [
        ("The capital is PARIS.", ["paris"], True),  # case
        ("ÉCOLE normale", ["école"], True),  # non-ASCII case
        ("STRASSE", ["straße"], False),  # lower-cased, not case-folded (ß stays ß)
        ("Paris, France; Berlin!", ["France"], True),  # punctuation splits tokens
        ("«Paris»", ["paris"], True),
        ("served in the U.S. Army", ["u.s. army"], True),  # punctuation tokens must match
        ("served in the US Army", ["U.S."], False),
        ("Paris, France", ["Paris,"], True),
        ("Paris France", ["Paris,"], False),
        ("the Beatles formed in 1960", ["Beatles"], True),  # articles in the text: ignored
        ("Beatles formed in 1960", ["The Beatles"], False),  # articles are kept (DPR string mode)
        ("a café in town", ["Cafe\u0301"], True),  # unicode: NFC and NFD forms agree
        ("a cafe\u0301 in town", ["café"], True),
        ("a cafe in town", ["café"], False),  # accents are not stripped
        ("Paris\u00a0Texas", ["paris texas"], True),  # any unicode space separates tokens
        ("\uff30\uff41\uff52\uff49\uff53", ["paris"], False),  # full-width letters stay apart
        ("我爱北京天安门", ["北京"], False),  # a run of letters is one token, CJK included
        ("我爱 北京 天安门", ["北京"], True),
        ("Two cats sat.", ["cat"], False),  # partial token
        ("concatenate", ["cat"], False),
        ("New   York\ncity", ["new york"], True),  # whitespace between tokens is irrelevant
        ("York New city", ["new york"], False),  # contiguous and ordered
        ("born in 1999", ["1999"], True),
        ("born in 19999", ["1999"], False),
        ("anything", [], False),
        ("anything", ["", "  "], False),  # empty answers never match (deviation from DPR)
        ("no match here", ["zebra", "here"], True),  # any of the answers
    ],
)
def test_has_answer(text: str, answers: list[str], expected: bool) -> None:
    assert has_answer(text, answers) is expected


def test_has_answer_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        has_answer("Paris", "Paris")


def test_dpr_tokens_follow_simple_tokenizer() -> None:
    assert dpr_tokens("Hello, World! 3.5 U.S.") == (
        "hello", ",", "world", "!", "3", ".", "5", "u", ".", "s", ".",
    )  # fmt: skip
    assert answer_tokens(["", "New York"]) == [("new", "york")]


def test_answer_checker_matches_each_query_against_the_doc_text() -> None:
    texts = {"d1": "Paris is in France.", "d2": "Berlin, Germany."}
    is_answer = answer_checker(texts.__getitem__)
    paris, berlin = Query("q1", "?", ("PARIS",)), Query("q2", "?", ("berlin", "Bonn"))
    assert [is_answer(paris, d) for d in texts] == [True, False]
    assert [is_answer(berlin, d) for d in texts] == [False, True]
    assert not is_answer(Query("q3", "no answers"), "d1")


def test_mining_and_evaluation_share_one_torch_free_has_answer() -> None:
    code = (
        "import sys, ar2.answers, ar2.evaluate, ar2.mining\n"
        "assert ar2.evaluate.has_answer is ar2.answers.has_answer\n"
        "assert ar2.answers.has_answer('in Paris', ['paris'])\n"
        "heavy = ('torch', 'transformers', 'sentence_transformers', 'faiss', 'ir_measures')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- ar2 train on a QA folder ---------------------------------------------------------------------


def write_qa_toy(root: Path) -> dict[str, Query]:
    """The training toy folder with answers: query ``t{t}q{j}`` (positive ``t{t}d{j}``) has the
    answer ``W{4t + j + 1}``, the detail word of the topic's next document, a BM25 hard negative
    that is not its positive. Returns the queries by id."""
    write_train_toy(root)
    objs = [json.loads(line) for line in (root / "queries.jsonl").read_text().splitlines()]
    for obj in objs:
        t, j = (int(x) for x in obj["_id"][1:].split("q"))
        obj["answers"] = [f"W{4 * t + j + 1}", "nowhere"]  # upper case: DPR lower-cases
    (root / "queries.jsonl").write_text("".join(json.dumps(obj) + "\n" for obj in objs))
    queries = {o["_id"]: Query(o["_id"], o["text"], tuple(o["answers"])) for o in objs}
    return queries


def _toy_config(model: Path, **changes: Any) -> Any:
    """The toy preset (``ar2 train --preset toy``) for the tiny ``model``, with ``changes``."""
    from ar2.config import load_ar2_config, load_toml

    preset = Path(__file__).parents[1] / "src" / "ar2" / "presets" / "toy.toml"
    raw = load_toml(preset) | {"retriever_model": str(model), "ranker_model": str(model)}
    return load_ar2_config(raw | changes, "toy variant")


def test_qa_training_groups_hold_no_answer_bearing_negative(tmp_path: Path) -> None:
    """Every mining of ``ar2 train`` (BM25 for G0, then each index refresh) drops the
    candidates that contain an answer from the negatives, and its manifest counts them.
    One round is enough to reach a refresh: round 1 mines ``mined/round-1``."""
    pytest.importorskip("torch")
    from ar2.data.beir import load_corpus
    from ar2.data.training import read_groups
    from ar2.train.ar2 import run_ar2
    from conftest import build_tiny_bert

    queries = write_qa_toy(tmp_path / "qa")
    model = build_tiny_bert(tmp_path / "tiny")
    out = tmp_path / "run"
    run_ar2(tmp_path / "qa", out, _toy_config(model, rounds=1))
    texts = {d.id: d.full_text() for d in load_corpus(tmp_path / "qa" / "corpus.jsonl")}
    folders = ["bm25", "round-0", "round-1"]  # G0's BM25, D0's, round 1's refresh
    for name in folders:
        groups = read_groups(out / "mined" / name)
        assert groups, name
        for group in groups:
            answers = queries[group.query.id].answers
            bearing = [d for d in group.negatives if has_answer(texts[d], answers)]
            assert not bearing, f"{name}: {group.query.id} has answer-bearing negatives {bearing}"
    for name in folders:
        manifest = json.loads((out / "mined" / name / "manifest.json").read_text())
        dropped = sum(
            len(set(g.excluded) - set(g.positives)) for g in read_groups(out / "mined" / name)
        )
        assert manifest["answers"]["dropped"] is True
        assert manifest["answers"]["negatives_dropped"] == dropped
    bm25 = json.loads((out / "mined" / "bm25" / "manifest.json").read_text())
    assert bm25["answers"]["negatives_dropped"] == bm25["groups"]  # each query's next doc
