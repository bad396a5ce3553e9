"""Reference checks of ar2.evaluate: hand-computed metrics, trec_eval's tie rule, stats, DPR."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from ar2 import evaluate as ev
from ar2.types import Hit, Query

pytest.importorskip("ir_measures")


# --- metrics against hand computations ------------------------------------------------------


def test_ndcg10_graded_matches_hand_computation():
    qrels = {"q1": {"a": 3, "b": 2, "c": 0, "d": 1}}
    run = {"q1": [Hit("x", 0.9), Hit("b", 0.8), Hit("c", 0.7), Hit("a", 0.6)]}
    # trec_eval: gain = grade, discount log2(rank + 1); ideal ranking a(3), b(2), d(1).
    dcg = 0 / math.log2(2) + 2 / math.log2(3) + 0 / math.log2(4) + 3 / math.log2(5)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert ev.evaluate(run, qrels, ["nDCG@10"])["nDCG@10"] == pytest.approx(dcg / idcg, abs=1e-12)


def test_ndcg_cutoff_ignores_docs_below_k():
    qrels = {"q1": {"a": 1}}
    run = {"q1": [Hit(f"n{i:02d}", 100.0 - i) for i in range(10)] + [Hit("a", 1.0)]}
    assert ev.evaluate(run, qrels, ["nDCG@10"]) == {"nDCG@10": 0.0}
    assert ev.evaluate(run, qrels, ["nDCG@20"])["nDCG@20"] == pytest.approx(1 / math.log2(12))


def test_rr_at_10_and_its_cutoff():
    qrels = {"q1": {"r": 1}, "q2": {"r": 1}}
    run = {
        "q1": [Hit("x", 3.0), Hit("y", 2.0), Hit("r", 1.0)],  # first relevant at rank 3
        "q2": [Hit(f"n{i:02d}", 100.0 - i) for i in range(10)] + [Hit("r", 0.5)],  # rank 11
    }
    pq = ev.per_query(run, qrels, ["RR@10", "RR"])
    assert pq["RR@10"] == {"q1": pytest.approx(1 / 3), "q2": 0.0}
    assert pq["RR"] == {"q1": pytest.approx(1 / 3), "q2": pytest.approx(1 / 11)}


def test_recall_and_precision_at_k():
    qrels = {"q1": {"a": 1, "b": 2, "c": 1, "d": 1, "z": 0}}
    run = {"q1": [Hit("a", 5.0), Hit("z", 4.0), Hit("b", 3.0), Hit("x", 2.0), Hit("c", 1.0)]}
    got = ev.evaluate(run, qrels, ["R@2", "R@5", "R@100", "P@5"])
    assert got == pytest.approx({"R@2": 1 / 4, "R@5": 3 / 4, "R@100": 3 / 4, "P@5": 3 / 5})


def test_measures_keyed_as_given_and_deduplicated():
    qrels = {"q1": {"a": 1}}
    got = ev.evaluate({"q1": [Hit("a", 1.0)]}, qrels, ["P@1", "AP@100", "P@1"])
    assert list(got) == ["P@1", "AP@100"]


@pytest.mark.parametrize("bad", ["nope@10", "nDCG@x", "", "P@"])
def test_invalid_measure_raises_value_error_with_examples(bad):
    with pytest.raises(ValueError, match="nDCG@10"):
        ev.evaluate({"q1": [Hit("a", 1.0)]}, {"q1": {"a": 1}}, [bad])


def test_single_string_measures_is_rejected():
    with pytest.raises(ValueError):
        ev.evaluate({"q1": [Hit("a", 1.0)]}, {"q1": {"a": 1}}, "nDCG@10")


# --- query set: missing queries count 0, unjudged ones are left out -------------------------


def test_missing_and_empty_queries_count_zero_and_lower_the_mean():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}, "q4": {"d": 1}}
    run = {"q1": [Hit("a", 1.0)], "q2": [Hit("b", 1.0)], "q3": []}  # q3 empty, q4 missing
    pq = ev.per_query(run, qrels, ["nDCG@10", "RR@10", "R@100", "AP@100"])
    for by_qid in pq.values():
        assert by_qid == {"q1": 1.0, "q2": 1.0, "q3": 0.0, "q4": 0.0}
    assert ev.evaluate(run, qrels, ["nDCG@10", "RR@10"]) == {"nDCG@10": 0.5, "RR@10": 0.5}


def test_unjudged_qrels_queries_and_extra_run_queries_are_ignored():
    qrels = {"q1": {"a": 1}, "q0": {"z": 0, "y": -1}}  # q0 has no relevant judgement
    run = {"q1": [Hit("a", 1.0)], "q0": [Hit("z", 1.0)], "extra": [Hit("a", 1.0)]}
    assert ev.per_query(run, qrels, ["P@1"]) == {"P@1": {"q1": 1.0}}


def test_qrels_without_relevant_judgements_raise():
    with pytest.raises(ValueError, match="grade > 0"):
        ev.evaluate({"q1": [Hit("a", 1.0)]}, {"q1": {"a": 0}}, ["P@1"])


# --- identical query and doc ids are kept (unlike BEIR for ArguAna/Quora) -------------------


def test_hit_with_doc_id_equal_to_query_id_is_kept():
    run = {"q1": [Hit("q1", 2.0), Hit("d2", 1.0)]}
    # Relevant self-hit counts as found...
    assert ev.evaluate(run, {"q1": {"q1": 1}}, ["RR@10"]) == {"RR@10": 1.0}
    # ...and a non-relevant self-hit still occupies rank 1 (BEIR would report 1.0 here).
    assert ev.evaluate(run, {"q1": {"d2": 1}}, ["RR@10", "P@1"]) == {"RR@10": 0.5, "P@1": 0.0}


# --- ties: trec_eval's rule (score desc, doc id desc), the same for every provider ----------


def test_pytrec_eval_itself_breaks_ties_by_doc_id_descending():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    evaluator = pytrec_eval.RelevanceEvaluator({"q": {"a": 1}}, {"recip_rank"})
    assert evaluator.evaluate({"q": {"a": 1.0, "b": 1.0}})["q"]["recip_rank"] == 0.5
    assert evaluator.evaluate({"q": {"a": 1.0, "B": 1.0}})["q"]["recip_rank"] == 1.0  # "B" < "a"


@pytest.mark.parametrize("measure", ["RR@10", "RR", "nDCG@10", "P@1", "AP@100"])
def test_ties_follow_trec_eval_rule_and_ignore_list_order(measure):
    qrels = {"q": {"a": 1}}
    hits = [Hit("a", 1.0), Hit("b", 1.0), Hit("c", 0.5)]
    # Equal scores: "b" > "a", so b ranks first and a second, whatever the list order.
    expected = {"RR@10": 0.5, "RR": 0.5, "nDCG@10": 1 / math.log2(3), "P@1": 0.0, "AP@100": 0.5}
    for ordering in (hits, hits[::-1]):
        got = ev.evaluate({"q": ordering}, qrels, [measure])[measure]
        assert got == pytest.approx(expected[measure])


def test_tie_doc_ids_compare_as_strings_not_numbers():
    qrels = {"q": {"d9": 1}}
    run = {"q": [Hit("d10", 1.0), Hit("d9", 1.0)]}  # "d9" > "d10" as strings
    assert ev.evaluate(run, qrels, ["RR@10", "RR"]) == {"RR@10": 1.0, "RR": 1.0}


def test_score_beats_doc_id_and_duplicates_keep_best_score():
    qrels = {"q": {"a": 1}}
    run = {"q": [Hit("z", 0.5), Hit("a", 0.9), Hit("z", 0.1)]}
    assert ev.evaluate(run, qrels, ["RR@10"]) == {"RR@10": 1.0}
    run = {"q": [Hit("z", 0.1), Hit("a", 0.5), Hit("z", 0.9)]}
    assert ev.evaluate(run, qrels, ["RR@10"]) == {"RR@10": 0.5}


def test_nan_score_is_rejected():
    with pytest.raises(ValueError, match="NaN"):
        ev.evaluate({"q": [Hit("a", float("nan"))]}, {"q": {"a": 1}}, ["P@1"])


def test_protocol_notes_state_the_rules():
    notes = ev.PROTOCOL_NOTES
    assert {"ties", "identical_ids", "missing_queries", "metric_library"} <= set(notes)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in notes.items())
    assert "doc id descending" in notes["ties"]
    import ir_measures

    assert f"ir_measures {ir_measures.__version__}" in notes["metric_library"]


def test_import_is_light():
    code = (
        "import sys, ar2.evaluate, ar2.report\n"
        "heavy = {'ir_measures', 'scipy', 'matplotlib', 'statsmodels', 'pytrec_eval', 'regex'}\n"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- compare: paired t-test + Holm -----------------------------------------------------------


def _pq(values: dict[str, list[float]], measure: str = "M") -> dict:
    return {s: {measure: {f"q{i}": v for i, v in enumerate(vs)}} for s, vs in values.items()}


def test_compare_p_values_equal_scipy_ttest_rel():
    stats = pytest.importorskip("scipy.stats")
    base, sys_a = [0.1, 0.4, 0.3, 0.9, 0.5], [0.3, 0.5, 0.2, 1.0, 0.8]
    rows = ev.compare(_pq({"base": base, "a": sys_a}), "base", ["M"])
    assert len(rows) == 1
    row = rows[0]
    assert row["system"] == "a" and row["baseline"] == "base" and row["measure"] == "M"
    assert row["p_value"] == pytest.approx(stats.ttest_rel(sys_a, base).pvalue, rel=1e-12)
    assert row["mean_diff"] == pytest.approx(sum(sys_a) / 5 - sum(base) / 5)
    assert row["p_holm"] == pytest.approx(row["p_value"])  # a single comparison
    assert row["significant"] is False


def test_compare_holm_matches_hand_computation(monkeypatch):
    pytest.importorskip("statsmodels")
    pq = _pq({"base": [0.0, 1.0], "a": [1.0, 1.0], "b": [1.0, 0.0], "c": [0.0, 0.0]})
    fake_p = {(1.0, 1.0): 0.01, (1.0, 0.0): 0.04, (0.0, 0.0): 0.03}  # a, b, c
    monkeypatch.setattr(ev, "_paired_p", lambda system, baseline: fake_p[tuple(system)])
    rows = ev.compare(pq, "base", ["M"])
    # Holm, m = 3: sorted 0.01 (a), 0.03 (c), 0.04 (b) -> 3*0.01 = 0.03,
    # max(0.03, 2*0.03) = 0.06, max(0.06, 1*0.04) = 0.06.
    assert {r["system"]: r["p_value"] for r in rows} == {"a": 0.01, "b": 0.04, "c": 0.03}
    holm = {r["system"]: r["p_holm"] for r in rows}
    assert holm == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    assert {r["system"]: r["significant"] for r in rows} == {"a": True, "b": False, "c": False}


def test_compare_holm_on_real_vectors_matches_hand_formula():
    stats = pytest.importorskip("scipy.stats")
    base = [0.2, 0.4, 0.1, 0.5, 0.3, 0.6]
    systems = {
        "a": [0.5, 0.7, 0.3, 0.9, 0.6, 0.8],
        "b": [0.3, 0.3, 0.2, 0.7, 0.3, 0.7],
        "c": [0.1, 0.5, 0.1, 0.6, 0.2, 0.6],
    }
    rows = ev.compare(_pq({"base": base, **systems}), "base", ["M"], alpha=0.05)
    raw = {s: stats.ttest_rel(v, base).pvalue for s, v in systems.items()}
    order = sorted(raw, key=raw.get)
    adjusted, running = {}, 0.0
    for i, s in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * raw[s]))
        adjusted[s] = running
    for r in rows:
        assert r["p_value"] == pytest.approx(raw[r["system"]])
        assert r["p_holm"] == pytest.approx(adjusted[r["system"]])
        assert r["significant"] == (adjusted[r["system"]] < 0.05)
        assert r["alpha"] == 0.05


def test_compare_identical_vectors_give_p_one_not_nan():
    rows = ev.compare(_pq({"base": [0.2, 0.5, 0.9], "same": [0.2, 0.5, 0.9]}), "base", ["M"])
    assert rows[0]["p_value"] == 1.0 and rows[0]["p_holm"] == 1.0
    assert rows[0]["mean_diff"] == 0.0 and rows[0]["significant"] is False


def test_compare_rows_cover_every_system_and_measure_but_the_baseline():
    pq = {s: {"M": {"q1": 0.1, "q2": 0.2}, "N": {"q1": 0.3, "q2": 0.4}} for s in "xyz"}
    rows = ev.compare(pq, "y", ["M", "N"])
    assert [(r["system"], r["measure"]) for r in rows] == [
        ("x", "M"),
        ("x", "N"),
        ("z", "M"),
        ("z", "N"),
    ]
    assert ev.compare({"y": pq["y"]}, "y", ["M"]) == []


def test_compare_rejects_mismatched_query_sets_and_unknown_baseline():
    pq = {"base": {"M": {"q1": 0.1, "q2": 0.2}}, "a": {"M": {"q1": 0.5}}}
    with pytest.raises(ValueError, match="different query sets"):
        ev.compare(pq, "base", ["M"])
    with pytest.raises(ValueError, match="baseline"):
        ev.compare(pq, "nobody", ["M"])
    with pytest.raises(ValueError, match="per-query values"):
        ev.compare(pq, "base", ["Other"])


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
def test_compare_on_per_query_output_end_to_end():
    qrels = {f"q{i}": {"good": 1} for i in range(8)}
    bad = {q: [Hit("x", 2.0), Hit("good", 1.0)] for q in qrels}
    good = {q: [Hit("good", 2.0), Hit("x", 1.0)] for q in qrels}
    pq = {s: ev.per_query(r, qrels, ["RR@10"]) for s, r in {"bad": bad, "good": good}.items()}
    (row,) = ev.compare(pq, "bad", ["RR@10"])
    assert row["mean_diff"] == 0.5
    assert row["p_value"] == 0.0  # a constant non-zero shift: scipy's t = inf, p = 0
    assert row["significant"] is True


# --- DPR answer containment (ar2.answers; its cases are in test_answers.py) -------------------


def test_has_answer_is_re_exported_from_ar2_answers():
    from ar2 import answers

    assert ev.has_answer is answers.has_answer
    assert ev.has_answer("The capital is PARIS.", ["paris"]) is True


def test_answer_accuracy_topk():
    texts = {"d1": "Paris is in France.", "d2": "Berlin is in Germany.", "d3": "Rome, Italy."}
    queries = [
        Query("q1", "capital of France", ("Paris",)),  # answer at rank 2
        Query("q2", "capital of Italy", ("Rome",)),  # answer at rank 1
        Query("q3", "capital of Spain", ("Madrid",)),  # never found
        Query("q4", "missing from run", ("Oslo",)),  # missing -> counts as a miss
        Query("q5", "no answers", ()),  # not counted at all
    ]
    run = {
        "q1": [Hit("d2", 0.9), Hit("d1", 0.8), Hit("d3", 0.1)],
        "q2": [Hit("d3", 0.7), Hit("d1", 0.2)],
        "q3": [Hit("d1", 0.5), Hit("d2", 0.4), Hit("d3", 0.3)],
        "q5": [Hit("d1", 1.0)],
    }
    got = ev.answer_accuracy(run, queries, texts, ks=(1, 2, 100))
    assert got == {"Acc@1": 1 / 4, "Acc@2": 2 / 4, "Acc@100": 2 / 4}


def test_answer_accuracy_uses_the_tie_rule_and_checks_inputs():
    texts = {"a": "the answer is 42", "b": "nothing"}
    queries = [Query("q", "?", ("42",))]
    run = {"q": [Hit("a", 1.0), Hit("b", 1.0)]}  # tie: "b" ranks first
    assert ev.answer_accuracy(run, queries, texts, ks=(1, 2)) == {"Acc@1": 0.0, "Acc@2": 1.0}
    with pytest.raises(ValueError, match="doc_text"):
        ev.answer_accuracy({"q": [Hit("zz", 1.0)]}, queries, texts, ks=(1,))
    with pytest.raises(ValueError, match="ks"):
        ev.answer_accuracy(run, queries, texts, ks=(0,))
    with pytest.raises(ValueError, match="no query has an answer"):
        ev.answer_accuracy(run, [Query("q", "?")], texts)


def test_a_chain_tests_each_system_against_the_one_before_with_one_holm_family() -> None:
    from ar2.evaluate import compare, compare_chain

    pq = {
        "a": {"m": {"q1": 0.1, "q2": 0.2, "q3": 0.3, "q4": 0.2}},
        "b": {"m": {"q1": 0.4, "q2": 0.3, "q3": 0.9, "q4": 0.5}},
        "c": {"m": {"q1": 0.5, "q2": 0.3, "q3": 0.8, "q4": 0.9}},
    }
    rows = compare_chain(pq, ["a", "b", "c"], ["m"])
    alone = [
        compare({k: pq[k] for k in pair}, pair[0], ["m"])[0] for pair in (("a", "b"), ("b", "c"))
    ]
    assert [r["p_value"] for r in rows] == [r["p_value"] for r in alone]
    smallest = min(r["p_value"] for r in rows)
    assert min(r["p_holm"] for r in rows) == pytest.approx(2 * smallest)  # two tests, one family
