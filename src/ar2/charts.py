"""The pictures ar2 writes: ``report.png`` for an evaluation and ``training.png`` for a run.

Both are drawn on a private Agg canvas (pyplot's global state is not touched) and returned as
PNG bytes, for the caller to write atomically.

Example:
    >>> png = report_chart({"bm25": {"nDCG@10": 0.5}}, {"bm25": {"nDCG@10": {"q1": 0.5}}})
    >>> png[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ar2._optional import require
from ar2.evaluate import mean_ci, win_tie_loss

PerQuery = Mapping[str, Mapping[str, Mapping[str, float]]]
"""``system -> measure -> query id -> value``."""

MAX_MEASURES = 4  # panels in report.png; a report with more lists them all in report.md
WTL_COLOURS = {"win": "#31a354", "tie": "#bdbdbd", "loss": "#de2d26"}


def report_chart(results: Mapping[str, Mapping[str, float]], per_query: PerQuery) -> bytes:
    """``report.png`` as PNG bytes (:func:`report_figure`)."""
    return _png(report_figure(results, per_query))


def report_figure(results: Mapping[str, Mapping[str, float]], per_query: PerQuery) -> Any:
    """Each measure's mean per system with its 95% confidence interval over queries, on an
    axis zoomed to the data; and, for the first measure, each system's per-query wins, ties
    and losses against the first system."""
    systems = list(results)
    measures = list(dict.fromkeys(m for r in results.values() for m in r))[:MAX_MEASURES]
    compare = len(systems) > 1 and bool(per_query)
    fig = _figure(11.0 if compare else 6.0, 0.8 + len(measures) * (1.0 + 0.3 * len(systems)))
    grid = fig.add_gridspec(len(measures), 2 if compare else 1)
    for row, measure in enumerate(measures):
        ax = fig.add_subplot(grid[row, 0])
        _draw_means(ax, results, per_query, systems, measure)
    if compare:
        _draw_wtl(fig.add_subplot(grid[:, 1]), per_query, systems, measures[0])
    fig.suptitle("Retrieval effectiveness: 95% CI of each mean over queries (paired tests of the "
                 "differences: report.md)")  # fmt: skip
    return fig


def _draw_means(
    ax: Any, results: Mapping[str, Mapping[str, float]], per_query: PerQuery,
    systems: list[str], measure: str,
) -> None:  # fmt: skip
    """One row per system: the mean, a bar to it from the axis' left edge, and its CI."""
    rows = []
    for system in systems:
        values = list(per_query.get(system, {}).get(measure, {}).values())
        mean = results[system].get(measure, float("nan"))
        _, low, high = mean_ci(values) if values else (mean, mean, mean)
        if values and 0.0 <= min(values) and max(values) <= 1.0:  # a measure bounded by [0, 1]
            low, high = max(low, 0.0), min(high, 1.0)
        rows.append((mean, low, high))
    finite = [v for row in rows for v in row if not math.isnan(v)]
    left, right = (min(finite), max(finite)) if finite else (0.0, 1.0)
    pad = max(0.02, 0.15 * (right - left))
    left, right = max(0.0, left - pad), right + pad
    ys = range(len(systems))[::-1]
    for y, (mean, low, high) in zip(ys, rows):
        ax.barh(y, mean - left, left=left, height=0.6, color="#9ecae1")
        errors = [[max(0.0, mean - low)], [max(0.0, high - mean)]]
        ax.errorbar(mean, y, xerr=errors, fmt="o", color="#08519c", capsize=3, markersize=4)
        ax.annotate(f"{mean:.4f}", (high, y), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8)  # fmt: skip
    ax.set_yticks(list(ys), systems, fontsize=8)
    ax.set_xlim(left, right + 0.25 * (right - left))
    ax.set_xlabel(f"{measure} (axis starts at {left:.2f})", fontsize=8)
    ax.grid(axis="x", alpha=0.3)


def _draw_wtl(ax: Any, per_query: PerQuery, systems: list[str], measure: str) -> None:
    """Stacked bars of wins, ties and losses per query against ``systems[0]``."""
    base = per_query.get(systems[0], {}).get(measure, {})
    others = systems[1:]
    ys = range(len(others))[::-1]
    for y, system in zip(ys, others):
        counts = win_tie_loss(base, per_query.get(system, {}).get(measure, {}))
        left = 0
        for count, colour in zip(counts, WTL_COLOURS.values()):
            ax.barh(y, count, left=left, color=colour, height=0.6)
            if count:
                ax.text(left + count / 2, y, str(count), ha="center", va="center", fontsize=8)
            left += count
    ax.set_yticks(list(ys), others, fontsize=8)
    ax.xaxis.set_major_locator(require("matplotlib.ticker").MaxNLocator(integer=True))
    ax.set_xlabel("queries", fontsize=8)
    ax.set_title(f"{measure} per query vs {systems[0]}: win / tie / loss", fontsize=9)
    patch = require("matplotlib.patches").Patch
    keys = [patch(color=c, label=k) for k, c in WTL_COLOURS.items()]
    ax.legend(handles=keys, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=3)


DEV_KEYS = (("G", "o"), ("D", "^"), ("G+D", "s"))
"""The dev figures a run logs per round: retriever, ranker alone, fused (:mod:`ar2.fusion`)."""
ADORE_DEV = ("dev-adore", "dev-gd-adore")
"""The stages that log dev G, and G+D and D, after ADORE's query-tower stage
(:mod:`ar2.train.adore`)."""


def training_chart(records: Sequence[Mapping[str, Any]], smooth: int = 10) -> bytes:
    """``training.png`` as PNG bytes (:func:`training_figure`)."""
    return _png(training_figure(records, smooth))


def training_figure(records: Sequence[Mapping[str, Any]], smooth: int = 10) -> Any:
    """From a run's ``metrics.jsonl`` records: dev G, D and G+D per round (integer rounds),
    and every training stage's loss per step, raw and smoothed (a moving mean of ``smooth``
    steps), the stages laid end to end in the order they ran."""
    fig = _figure(12.0, 4.2)
    dev_ax, loss_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    _draw_dev(dev_ax, records)
    _draw_losses(loss_ax, [r for r in records if r.get("losses")], smooth)
    fig.suptitle("Training")
    return fig


def _draw_dev(ax: Any, records: Sequence[Mapping[str, Any]]) -> None:
    rounds: set[int] = set()
    rows = [r for r in records if r["stage"] not in ADORE_DEV]
    adore = [r for r in records if r["stage"] in ADORE_DEV]
    for key, marker in DEV_KEYS:
        points = sorted((r["round"], r["dev"][key]) for r in rows if key in r.get("dev", {}))
        if points:
            line = ax.plot(*zip(*points), marker=marker, label=key)
            rounds.update(p[0] for p in points)
        after = [(r["round"], r["dev"][key]) for r in adore if key in r["dev"]]
        if after:  # the query tower trained after the rounds: points beside the last round's
            colour = line[0].get_color() if points else None
            ax.plot(*zip(*after), marker="*", markersize=12, linestyle="none", color=colour,
                    label=f"{key}, ADORE")  # fmt: skip
    ticker = require("matplotlib.ticker")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set(xlabel="round (0 = warm-ups G0, D0)", ylabel="dev metric", title="dev effectiveness")
    if rounds:
        ax.set_xlim(min(rounds) - 0.3, max(rounds) + 0.3)
        low, high = ax.get_ylim()
        ax.set_ylim(low, high + 0.25 * (high - low))  # room above the lines for the legend
        ax.legend(fontsize=8, loc="upper center", ncols=len(DEV_KEYS))
    ax.grid(alpha=0.3)


def _draw_losses(ax: Any, stages: Sequence[Mapping[str, Any]], smooth: int) -> None:
    colours = {"retriever": "#1f77b4", "ranker": "#ff7f0e"}
    start = 0
    for record in stages:
        losses = [float(x) for x in record["losses"]]
        xs = range(start, start + len(losses))
        colour = colours.get(record.get("model", ""), "#555555")
        stage = record["stage"]
        ax.plot(xs, losses, color=colour, alpha=0.25, linewidth=0.8, label=f"_raw {stage}")
        ax.plot(xs, moving_mean(losses, smooth), color=colour, linewidth=1.6,
                label=f"_smooth {stage}")  # fmt: skip
        ax.axvline(start, color="#999999", linewidth=0.6, linestyle=":")
        ax.annotate(stage, (start, 0.0), xycoords=("data", "axes fraction"), xytext=(2, 4),
                    textcoords="offset points", fontsize=7, rotation=90)  # fmt: skip
        start += len(losses)
    for model, colour in colours.items():
        ax.plot([], [], color=colour, label=model)
    if stages and all(min(map(float, r["losses"])) > 0 for r in stages):
        ax.set_yscale("log")
        ticker = require("matplotlib.ticker")
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_major_locator(require("matplotlib.ticker").MaxNLocator(integer=True))
    ax.set(xlabel="step (stages end to end)", ylabel="loss", title=f"losses (mean of {smooth})")
    ax.legend(fontsize=8, loc="best")
    if not stages:
        ax.text(0.5, 0.5, "no per-step losses recorded", ha="center", transform=ax.transAxes)


def moving_mean(values: Sequence[float], window: int) -> list[float]:
    """The mean of each value and the ``window - 1`` before it (fewer at the start).

    Example:
        >>> moving_mean([1.0, 3.0, 5.0], 2)
        [1.0, 2.0, 4.0]
    """
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def anncur_chart(rows: Sequence[Mapping[str, Any]], k: int) -> bytes:
    """``anncur.png``: :func:`anncur_figure` as PNG bytes."""
    return _png(anncur_figure(rows, k))


def anncur_figure(rows: Sequence[Mapping[str, Any]], k: int) -> Any:
    """Recall of the ranker's exact top ``k`` and nDCG@10 against ranker calls per query:
    retrieve-then-rerank as one line, ANNCUR as one line per number of anchor documents."""
    fig = _figure(10, 4)
    lines: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        name = r["method"] if r["method"] != "anncur" else f"ANNCUR, k_i = {r['anchor_items']}"
        lines.setdefault(name, []).append(r)
    for i, (measure, label) in enumerate((("recall", f"recall of the ranker's top {k}"),
                                          ("nDCG@10", "nDCG@10 (qrels)"))):  # fmt: skip
        ax = fig.add_subplot(1, 2, i + 1)
        for name, points in lines.items():
            points = sorted(points, key=lambda r: r["calls"])
            style = "k-o" if name == "retrieve-then-rerank" else "--^"
            ax.plot([p["calls"] for p in points], [p[measure] for p in points], style,
                    label=name, markersize=4)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("ranker calls per query")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    return fig


def _figure(width: float, height: float) -> Any:
    figure = require("matplotlib.figure", extra="eval").Figure(figsize=(width, height))
    require("matplotlib.backends.backend_agg").FigureCanvasAgg(figure)
    return figure


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()
