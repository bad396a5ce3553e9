"""Checks of ar2.charts (and the statistics it draws from ar2.evaluate): the figures' numbers
against hand and scipy computations."""

from __future__ import annotations

import math
import random

import pytest

from ar2.charts import moving_mean, report_chart, report_figure, training_chart, training_figure
from ar2.evaluate import mean_ci, win_tie_loss

pytest.importorskip("matplotlib")
stats = pytest.importorskip("scipy.stats")


def _per_query(means: dict[str, float], n: int = 40) -> dict:
    rng = random.Random(0)
    return {
        s: {"nDCG@10": {f"q{i}": min(1.0, max(0.0, m + rng.uniform(-0.2, 0.2))) for i in range(n)}}
        for s, m in means.items()
    }


def test_mean_ci_is_scipys_student_t_interval() -> None:
    rng = random.Random(1)
    values = [rng.random() for _ in range(25)]
    mean, low, high = mean_ci(values)
    want = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    assert mean == pytest.approx(sum(values) / 25)
    assert (low, high) == pytest.approx(want)
    assert mean_ci([0.3]) == (0.3, 0.3, 0.3)


def test_win_tie_loss_counts_shared_queries_only() -> None:
    base = {"a": 0.5, "b": 0.5, "c": 1.0, "d": 0.2}
    other = {"a": 0.7, "b": 0.5, "c": 0.0, "e": 1.0}
    assert win_tie_loss(base, other) == (1, 1, 1)


def test_the_report_chart_zooms_to_the_data_and_shows_intervals() -> None:
    per_query = _per_query({"bm25": 0.66, "g0": 0.70, "ar2-g": 0.71})
    results = {s: {"nDCG@10": sum(v["nDCG@10"].values()) / 40} for s, v in per_query.items()}
    fig = report_figure(results, per_query)
    means_ax, wtl_ax = fig.axes
    left, right = means_ax.get_xlim()
    assert 0.3 < left < min(r["nDCG@10"] for r in results.values())  # not drawn from 0
    intervals = [mean_ci(list(v["nDCG@10"].values())) for v in per_query.values()]
    assert right > max(high for _, _, high in intervals)
    # the win/tie/loss bars add up to the queries each system shares with the first one
    widths = sorted(round(p.get_width()) for p in wtl_ax.patches if p.get_width() > 0)
    counts = [
        win_tie_loss(per_query["bm25"]["nDCG@10"], per_query[s]["nDCG@10"]) for s in ("g0", "ar2-g")
    ]
    assert widths == sorted(c for row in counts for c in row if c)
    assert report_chart(results, per_query).startswith(b"\x89PNG\r\n\x1a\n")


def test_a_one_system_report_has_no_comparison_panel() -> None:
    fig = report_figure({"bm25": {"nDCG@10": 0.5}}, {"bm25": {"nDCG@10": {"q1": 0.5}}})
    assert len(fig.axes) == 1


RECORDS = [
    {"stage": "g0-train", "round": 0, "model": "retriever", "losses": [2.0, 1.0, 0.5]},
    {"stage": "dev-g-0", "round": 0, "dev": {"G": 0.60}},
    {"stage": "d0-train", "round": 0, "model": "ranker", "losses": [1.5, 1.4]},
    {"stage": "dev-gd-0", "round": 0, "dev": {"G+D": 0.62, "D": 0.55}},
    {"stage": "round-1-retriever", "round": 1, "model": "retriever", "losses": [0.9, 0.8]},
    {"stage": "dev-g-1", "round": 1, "dev": {"G": 0.63}},
    {"stage": "dev-gd-1", "round": 1, "dev": {"G+D": 0.64, "D": 0.56}},
]


def test_the_training_chart_draws_dev_per_round_and_every_step() -> None:
    fig = training_figure(RECORDS, smooth=2)
    dev_ax, loss_ax = fig.axes
    lines = {line.get_label(): line for line in dev_ax.get_lines()}
    assert set(lines) == {"G", "D", "G+D"}
    assert list(lines["D"].get_xdata()) == [0, 1] and list(lines["G"].get_ydata()) == [0.60, 0.63]
    assert all(float(t).is_integer() for t in dev_ax.get_xticks())
    drawn = {line.get_label(): line for line in loss_ax.get_lines()}
    raw = [list(drawn[f"_raw {r['stage']}"].get_ydata()) for r in RECORDS if "losses" in r]
    assert raw == [[2.0, 1.0, 0.5], [1.5, 1.4], [0.9, 0.8]]
    assert list(drawn["_smooth g0-train"].get_ydata()) == moving_mean([2.0, 1.0, 0.5], 2)
    assert list(drawn["_raw round-1-retriever"].get_xdata()) == [5, 6]  # stages end to end
    assert training_chart(RECORDS).startswith(b"\x89PNG\r\n\x1a\n")


def test_moving_mean_matches_a_direct_computation() -> None:
    rng = random.Random(2)
    values = [rng.random() for _ in range(30)]
    want = [sum(values[max(0, i - 6) : i + 1]) / min(i + 1, 7) for i in range(30)]
    assert all(math.isclose(a, b) for a, b in zip(moving_mean(values, 7), want))


def test_identical_queries_draw_a_zero_width_interval() -> None:
    per_query = {"a": {"m": {"q1": 0.1, "q2": 0.1, "q3": 0.1}}, "b": {"m": {"q1": 0.3, "q2": 0.3}}}
    fig = report_figure({"a": {"m": 0.1}, "b": {"m": 0.3}}, per_query)
    assert fig.axes[0].get_xlim()[0] < 0.1
    from matplotlib.container import ErrorbarContainer

    bars = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    (start, _), (end, _) = bars[0].lines[2][0].get_segments()[0]  # system a's interval
    assert start == pytest.approx(0.1) and end == pytest.approx(0.1)


@pytest.mark.parametrize("systems", [1, 2, 6])
def test_the_report_chart_lays_out_every_size_without_warnings(systems: int) -> None:
    import warnings

    measures = ["nDCG@10", "RR@10", "R@10", "R@100"]
    names = [f"s{i}" for i in range(systems)]
    per_query = {s: {m: {"q1": 0.5, "q2": 0.7} for m in measures} for s in names}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Tight layout not applied"
        report_chart({s: dict.fromkeys(measures, 0.6) for s in names}, per_query)
