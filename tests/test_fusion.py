"""Score fusion: z-scores and interpolation against hand computations; the weight tuned on dev."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ar2.config import RankerConfig
from ar2.errors import Ar2Error
from ar2.fusion import fused_run, interpolate, rerank, tune_weight, with_tail, zscore
from ar2.types import Hit


def test_zscore_by_hand() -> None:
    # mean 2, population std sqrt(2/3)
    s = math.sqrt(2 / 3)
    np.testing.assert_allclose(zscore(np.array([1.0, 2.0, 3.0])), [-1 / s, 0.0, 1 / s])
    assert zscore(np.array([5.0, 5.0])).tolist() == [0.0, 0.0]
    assert zscore(np.array([7.0])).tolist() == [0.0]


def test_interpolate_by_hand() -> None:
    g, d = np.array([1.0, 3.0]), np.array([10.0, 0.0])  # z(g) = [-1, 1], z(d) = [1, -1]
    np.testing.assert_allclose(interpolate(g, d, 0.25), [0.75 * -1 + 0.25 * 1, 0.75 - 0.25])
    np.testing.assert_allclose(interpolate(g, d, 0.0), [-1.0, 1.0])
    np.testing.assert_allclose(interpolate(g, d, 1.0), [1.0, -1.0])


def test_rerank_weight_one_is_the_ranker_order_with_its_logits() -> None:
    hits = [Hit("a", 0.9), Hit("b", 0.5), Hit("c", 0.1)]
    out = rerank(hits, np.array([-2.0, 3.0, 3.0]), 1.0)
    assert out == [Hit("b", 3.0), Hit("c", 3.0), Hit("a", -2.0)]  # tie broken by doc id


def test_rerank_weight_zero_keeps_the_retrieval_order() -> None:
    hits = [Hit("a", 0.9), Hit("b", 0.5), Hit("c", 0.1)]
    assert [h.doc_id for h in rerank(hits, np.array([-2.0, 3.0, 9.0]), 0.0)] == ["a", "b", "c"]


def test_with_tail_scores_the_tail_below_the_head() -> None:
    out = with_tail([Hit("x", 2.0), Hit("y", -1.0)], [Hit("z", 50.0), Hit("w", 40.0)])
    assert [h.doc_id for h in out] == ["x", "y", "z", "w"]
    assert out[2].score < -1.0 and out[3].score < out[2].score


def test_tune_weight_breaks_ties_towards_the_retriever() -> None:
    # retriever and ranker agree: every weight gives the same ranking, so w = 0 is kept
    scored = {"q1": ([Hit("r1", 1.0), Hit("n1", 0.0)], np.array([3.0, 1.0]))}
    depth = {"q1": [Hit("r1", 1.0), Hit("n1", 0.0), Hit("t1", -1.0)]}
    best, values = tune_weight(scored, depth, {"q1": {"r1": 1}}, "RR@10")
    assert best == 0.0 and set(values.values()) == {1.0} and len(values) == 11
    assert [h.doc_id for h in fused_run(scored, depth, 0.3)["q1"]] == ["r1", "n1", "t1"]


def test_tune_weight_prefers_the_better_weight() -> None:
    scored = {
        "q1": ([Hit("r1", 1.0), Hit("n1", 0.9), Hit("m1", 0.0)], np.array([2.0, 0.0, 1.0])),
        "q2": ([Hit("n2", 1.0), Hit("r2", 0.9), Hit("m2", 0.0)], np.array([0.0, 2.0, 1.0])),
    }
    qrels = {"q1": {"r1": 1}, "q2": {"r2": 1}}
    best, values = tune_weight(scored, {}, qrels, "RR@10", weights=(0.0, 1.0))
    assert values == {0.0: pytest.approx(0.75), 1.0: pytest.approx(1.0)} and best == 1.0


def test_fusion_weight_is_validated() -> None:
    with pytest.raises(Ar2Error, match=r"\[0, 1\]"):
        RankerConfig(fusion_weight=1.5)


def test_an_ensemble_mix_is_the_weighted_sum_of_normalised_parts() -> None:
    from ar2.fusion import minmax, mix, zscore

    a, b = np.array([3.0, 1.0, 2.0]), np.array([10.0, 10.0, 40.0])
    by_hand = 5.0 * (0.25 * np.array([1.0, 0.0, 0.5]) + 0.75 * np.array([0.0, 0.0, 1.0]))
    got = mix({"a": a, "b": b, "c": np.zeros(3)}, {"a": 0.25, "b": 0.75, "c": 0.0}, "minmax", 5.0)
    np.testing.assert_allclose(got, by_hand)
    np.testing.assert_allclose(mix({"a": a}, {"a": 1.0}, "zscore"), zscore(a))
    assert minmax(np.array([2.0, 2.0])).tolist() == [0.0, 0.0]
