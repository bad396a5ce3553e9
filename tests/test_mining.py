"""Mining: positives never become negatives; sampling is uniform without replacement."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from ar2.data.beir import load_beir
from ar2.data.training import TrainingGroup, read_groups, write_groups
from ar2.index import BM25Index
from ar2.mining import (
    answer_check,
    build_groups,
    drop_positives,
    mine,
    sample_negatives,
    write_mined,
)
from ar2.pipeline import BM25Retriever
from ar2.types import Doc, Hit, Query


def test_drop_positives_removes_graded_positives_and_keeps_judged_non_relevant() -> None:
    run = {"q": [Hit("a", 4.0), Hit("b", 3.0), Hit("c", 2.0), Hit("d", 1.0)]}
    pools = drop_positives(run, {"q": {"a": 2, "c": 1, "d": 0}})
    assert pools == {"q": (["b", "d"], ["a", "c"])}


def test_drop_positives_with_answers() -> None:
    run = {"q": [Hit("a", 2.0), Hit("b", 1.0)]}
    texts = {"a": "Paris is in France", "b": "Berlin"}
    query = Query("q", "capital of France", ("Paris",))
    pools = drop_positives(run, {}, lambda q, d: q.answers[0] in texts[d], {"q": query})
    assert pools == {"q": (["b"], ["a"])}


def test_mine_with_answers_drops_answer_bearing_candidates(toy_beir: Path) -> None:
    corpus, queries, qrels = load_beir(toy_beir, "test")
    docs = {d.id: d for d in corpus}
    qa = [q._replace(answers=("Study",)) if q.id == "q3" else q for q in queries]
    retriever = BM25Retriever(BM25Index.build(corpus))
    assert answer_check(queries, docs) is None  # no query carries answers: nothing to check
    check = answer_check(qa, docs)
    assert check is not None
    plain = mine(retriever, qa, qrels, k=8)
    assert set(plain[0].negatives) == {"d5", "d6"}  # d5: "... heart blood study in mice"
    (group,) = mine(retriever, qa, qrels, k=8, is_answer=check)
    assert group.query.id == "q3" and group.negatives == ("d6",)
    assert group.positives == ("q3",) and set(group.excluded) == {"q3", "d5"}


def test_write_mined_records_the_answer_drops(tmp_path: Path) -> None:
    query = Query("q1", "capital of France?", ("Paris",))
    groups = [
        TrainingGroup(query, ("d1",), ("d4",), ("d1", "d2", "d3")),
        TrainingGroup(Query("q2", "?", ("Rome",)), ("d5",), ("d6",), ("d5",)),
    ]
    write_mined(tmp_path / "qa", groups, {"round": 1}, dropped=True)
    manifest = json.loads((tmp_path / "qa" / "manifest.json").read_text())
    assert manifest["round"] == 1 and manifest["groups"] == 2
    answers = manifest["answers"]
    assert answers["dropped"] is True and "has_answer" in answers["match"]
    assert (answers["negatives_dropped"], answers["groups_with_drops"]) == (2, 1)
    write_mined(tmp_path / "plain", groups[1:], {"round": 1}, dropped=False)
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert manifest["answers"]["dropped"] is False
    assert read_groups(tmp_path / "qa") == [g._replace(query=g.query._replace(answers=()))
                                            for g in groups]  # fmt: skip


def test_answer_check_reads_title_and_text() -> None:
    docs = {"d1": Doc("d1", "a city on the Seine", title="Paris"), "d2": Doc("d2", "Rome")}
    check = answer_check([Query("q", "?", ("paris",))], docs)
    assert check is not None and check(Query("q", "?", ("paris",)), "d1")
    assert not check(Query("q", "?", ("paris",)), "d2")


def test_sample_without_replacement_and_uniform() -> None:
    rng = random.Random(0)
    pool = [f"d{i}" for i in range(10)]
    for _ in range(200):
        picked = sample_negatives(pool, 7, rng)
        assert len(picked) == len(set(picked)) == 7 and set(picked) <= set(pool)
    draws = 20_000
    first = Counter(sample_negatives(pool, 3, rng)[0] for _ in range(draws))
    assert set(first) == set(pool)
    # each of 10 ids should come first with p = 0.1; 5 standard deviations is about 0.0106
    assert all(abs(c / draws - 0.1) < 0.0106 for c in first.values())


def test_small_pool_is_tiled_evenly_and_seeded() -> None:
    picked = sample_negatives(["a", "b", "c"], 7, random.Random(1))
    counts = Counter(picked)
    assert len(picked) == 7 and set(counts) == {"a", "b", "c"}
    assert all(2 <= c <= 3 for c in counts.values())
    assert picked == sample_negatives(["a", "b", "c"], 7, random.Random(1))
    assert sample_negatives([], 3, random.Random(0)) == []


def test_build_groups_drops_queries_without_positive_or_pool() -> None:
    queries = [Query("q1", "x"), Query("q2", "y"), Query("q3", "z")]
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    pools = {"q1": (["c"], ["a"]), "q2": ([], ["b"]), "q3": (["d"], [])}
    assert build_groups(queries, qrels, pools) == [
        TrainingGroup(Query("q1", "x"), ("a",), ("c",), ("a",))
    ]


def test_mine_with_bm25_never_returns_a_positive(toy_beir: Path) -> None:
    corpus, queries, qrels = load_beir(toy_beir, "test")
    groups = mine(BM25Retriever(BM25Index.build(corpus)), queries, qrels, k=8)
    ids = [g.query.id for g in groups]
    # q1 and q2 match only their positives lexically: an empty pool drops them
    assert ids == ["q3"]
    for group in groups:
        relevant = {d for d, g in qrels[group.query.id].items() if g > 0}
        assert set(group.positives) == relevant
        assert not relevant & set(group.negatives)
        assert set(group.excluded) <= relevant
    assert groups[0].excluded == ("q3",)  # the doc whose id equals the query id is its positive
    assert set(groups[0].negatives) == {"d5", "d6"}  # "heart", "risk"


def test_groups_round_trip_with_provenance(tmp_path: Path) -> None:
    groups = [
        TrainingGroup(Query("q1", "cats"), ("d1",), ("d3", "d2"), ("d1",)),
        TrainingGroup(Query("7", "dogs"), ("d4", "d5"), ("d6",)),
    ]
    provenance = {"round": 2, "k": 100, "n": 7, "checkpoint": "runs/x/round-1/retriever"}
    write_groups(tmp_path / "g", groups, provenance)
    assert read_groups(tmp_path / "g") == groups
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert manifest["groups"] == 2 and manifest["round"] == 2 and manifest["k"] == 100


def test_corrupt_groups_file_names_the_line(tmp_path: Path) -> None:
    from ar2.errors import DataError

    write_groups(tmp_path / "g", [TrainingGroup(Query("q", "x"), ("a",), ("b",))], {})
    with open(tmp_path / "g" / "groups.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(DataError, match=r"groups.jsonl:2"):
        read_groups(tmp_path / "g")


# --- false-negative filters (issue 14) ---------------------------------------------------

RUN = {
    "q": [Hit("a", 0.95), Hit("p", 0.9), Hit("b", 0.85), Hit("c", 0.6), Hit("d", 0.3)],
    "u": [Hit("e", 0.8), Hit("f", 0.5), Hit("g", 0.2)],  # its positive "x" was not retrieved
}
QRELS = {"q": {"p": 1}, "u": {"x": 1}}


def _filtered(flt: object, queries: dict[str, Query] | None = None) -> dict[str, list]:
    from ar2.mining import FalseNegativeFilter

    assert isinstance(flt, FalseNegativeFilter)
    return flt.apply(RUN, drop_positives(RUN, QRELS), QRELS, queries)[1]


def test_the_rank_window_drops_the_top_ranks_positives_counted() -> None:
    from ar2.mining import FalseNegativeFilter

    dropped = _filtered(FalseNegativeFilter(rank_start=3))
    assert dropped["q"] == [("rank_window", "a"), ("rank_window", "b")]
    assert dropped["u"] == [("rank_window", "e"), ("rank_window", "f"), ("rank_window", "g")]


def test_the_relative_margin_drops_what_scores_near_the_positive() -> None:
    from ar2.mining import FalseNegativeFilter

    # q: floor = 0.8 x 0.9 = 0.72: a (0.95) and b (0.85) go, c (0.6) stays
    # u: its positive was not retrieved; scored 0.7 by the retriever, floor 0.56: e goes
    scored = []

    def positive_score(query: Query, ids: object) -> float:
        scored.append((query.id, list(ids)))  # type: ignore[call-overload]
        return 0.7

    flt = FalseNegativeFilter(relative_margin=0.2, positive_score=positive_score)
    dropped = _filtered(flt, {"q": Query("q", "x"), "u": Query("u", "y")})
    assert dropped == {"q": [("relative_margin", "a"), ("relative_margin", "b")],
                       "u": [("relative_margin", "e")]}  # fmt: skip
    assert scored == [("u", ["x"])]  # only the positive that was not retrieved is scored


def test_filtered_candidates_are_never_sampled_and_are_counted_in_the_manifest(
    tmp_path: Path,
) -> None:
    from ar2.mining import FalseNegativeFilter

    class Fixed:
        def retrieve(self, queries: list[Query], k: int) -> dict[str, list[Hit]]:
            return {q.id: RUN[q.id][:k] for q in queries}

    flt = FalseNegativeFilter(rank_start=2, relative_margin=0.2)
    queries = [Query("q", "x"), Query("u", "y")]
    groups = mine(Fixed(), queries, QRELS, 5, None, flt)
    assert [g.negatives for g in groups] == [("c", "d"), ("g",)]
    write_mined(tmp_path / "m", groups, {"round": 0}, False, flt)
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["false_negatives"] == {
        "filtered": True, "rank_start": 2, "relative_margin": 0.2,
        "dropped": {"rank_window": 3, "relative_margin": 1}, "groups_with_drops": 2,
    }  # fmt: skip
    assert read_groups(tmp_path / "m") == groups  # the drops travel with the groups
    write_mined(tmp_path / "n", groups, {"round": 0}, False)
    assert json.loads((tmp_path / "n" / "manifest.json").read_text())["false_negatives"] == {
        "filtered": False
    }


def test_a_rank_window_as_deep_as_the_mining_is_refused() -> None:
    from ar2.config import AR2Config

    with pytest.raises(ValueError, match="below mine_k"):
        AR2Config(mine_k=10, mine_rank_start=10)


def test_the_dense_and_bm25_retrievers_score_given_documents_as_they_rank(toy_beir: Path) -> None:
    pytest.importorskip("torch")
    corpus, queries, _ = load_beir(toy_beir, "test")
    retriever = BM25Retriever(BM25Index.build(corpus))
    query = queries[0]
    hits = retriever.retrieve([query], 3)[query.id]
    docs = {d.id: d for d in corpus}
    scores = retriever.score(query, [docs[h.doc_id] for h in hits])
    assert scores.tolist() == pytest.approx([h.score for h in hits])
    from ar2.encoders import BiEncoder
    from ar2.index import FaissIndex
    from ar2.pipeline import DenseRetriever
    from conftest import build_tiny_bert

    encoder = BiEncoder.load(build_tiny_bert(toy_beir.parent / "tiny-mining"))
    index = FaissIndex.build(encoder.encode_docs(corpus), [d.id for d in corpus])
    dense = DenseRetriever(encoder, index)
    hits = dense.retrieve([query], 3)[query.id]
    scores = dense.score(query, [docs[h.doc_id] for h in hits])
    assert scores.tolist() == pytest.approx([h.score for h in hits], abs=1e-5)
