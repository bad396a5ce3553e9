"""Honest evaluation: IR metrics via ir_measures, paired significance tests, DPR answer accuracy.

Every number follows one documented protocol (:data:`PROTOCOL_NOTES`), so a report can state it:

* the query set is every query of the qrels with at least one judgement of grade > 0; a query
  missing from the run (or with no hits) scores 0, it is never silently skipped;
* ties are broken as trec_eval does (score descending, then doc id descending), whatever the
  order of the hit list, and every ir_measures provider sees that same ranking;
* a hit whose doc id equals its query id is kept (BEIR drops those for ArguAna and Quora).

Heavy libraries (ir_measures, scipy, statsmodels, regex) are imported lazily, inside functions.
Answer matching (:func:`has_answer`, DPR string mode) lives in :mod:`ar2.answers`, shared with
the mining of hard negatives; it is re-exported here.

Example:
    >>> from ar2.types import Hit
    >>> qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    >>> evaluate({"q1": [Hit("d1", 2.0), Hit("d3", 1.0)]}, qrels, ["RR@10"])
    {'RR@10': 0.5}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

from ar2._optional import require
from ar2.answers import AnswerTokens, answer_tokens, contains_answer, dpr_tokens
from ar2.answers import has_answer as has_answer  # re-exported: evaluate.has_answer
from ar2.types import Qrels, Query, Run

MEASURE_EXAMPLES = ("nDCG@10", "RR@10", "R@100", "P@5", "AP@100")
"""Example measure names in ir_measures syntax, quoted in error messages."""


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:  # pragma: no cover - depends on the environment
        return "not installed"


PROTOCOL_NOTES: dict[str, str] = {
    "metric_library": (
        f"ir_measures {_version('ir-measures')} (default providers: pytrec_eval-terrier "
        f"{_version('pytrec-eval-terrier')}, i.e. trec_eval, for nDCG/AP/P/R; MS MARCO's "
        "script for RR@k); per-query values averaged with an arithmetic mean"
    ),
    "query_set": (
        "every query in the qrels with at least one judgement of grade > 0; run queries absent "
        "from the qrels are ignored; queries whose judgements are all <= 0 are left out"
    ),
    "missing_queries": (
        "a judged query absent from the run, or with an empty hit list, scores 0 on every "
        "measure and stays in the mean (pytrec_eval alone would skip it)"
    ),
    "ties": (
        "trec_eval's rule: hits are ordered by score descending, then doc id descending "
        "(code-point order, as strcmp on UTF-8); the order of the hit list is ignored. Scores "
        "are replaced by strictly decreasing ranks in that order, so every provider sees the "
        "same ranking; a doc id repeated within a query keeps its highest score"
    ),
    "identical_ids": (
        "hits whose doc id equals the query id are kept and scored like any other (BEIR's "
        "evaluator drops them for ArguAna and Quora, so BEIR numbers there can differ)"
    ),
    "gains": "nDCG uses trec_eval's linear gains (gain = grade) and log2 discounts",
    "significance": (
        "paired two-sided t-test (scipy.stats.ttest_rel) per measure against the baseline, "
        "Holm correction over all comparisons (statsmodels multipletests, method='holm')"
    ),
}
"""How :func:`per_query` and :func:`compare` compute their numbers, for reports."""


def parse_measures(measures: Sequence[str]) -> dict[str, Any]:
    """Map each measure name (as given, deduplicated) to its ir_measures object.

    Raises:
        ValueError: An empty list or a name ir_measures does not know (examples listed).

    Example:
        >>> list(parse_measures(["nDCG@10", "R@100"]))
        ['nDCG@10', 'R@100']
    """
    ir_measures = require("ir_measures")
    if isinstance(measures, str) or not measures:
        raise ValueError(
            f"measures must be a non-empty list of names such as {list(MEASURE_EXAMPLES)}"
        )
    parsed: dict[str, Any] = {}
    for name in measures:
        try:
            parsed[name] = ir_measures.parse_measure(name)
        except Exception as err:  # ir_measures raises NameError, ValueError, TypeError...
            raise ValueError(
                f"unknown measure {name!r}: use ir_measures syntax, "
                f"for example {', '.join(MEASURE_EXAMPLES)}"
            ) from err
    return parsed


def _judged_qids(qrels: Qrels) -> list[str]:
    """Ids of the queries with at least one judgement of grade > 0, sorted."""
    return sorted(qid for qid, judged in qrels.items() if any(g > 0 for g in judged.values()))


def _ranked(hits: Sequence[Any]) -> list[str]:
    """Doc ids in trec_eval's order: score desc, then doc id desc; duplicates keep the best."""
    best: dict[str, float] = {}
    for doc_id, score in hits:
        score = float(score)
        if math.isnan(score):
            raise ValueError(f"hit {doc_id!r} has a NaN score; scores must be numbers")
        if doc_id not in best or score > best[doc_id]:
            best[doc_id] = score
    return sorted(best, key=lambda d: (best[d], d), reverse=True)


def _rank_scored(run: Run, qids: Sequence[str]) -> dict[str, dict[str, float]]:
    """The run restricted to ``qids``, scores replaced by strictly decreasing rank scores."""
    out: dict[str, dict[str, float]] = {}
    for qid in qids:
        ranked = _ranked(run.get(qid) or [])
        if ranked:
            out[qid] = {doc_id: float(len(ranked) - i) for i, doc_id in enumerate(ranked)}
    return out


def per_query(run: Run, qrels: Qrels, measures: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-query values of each measure, under the protocol in :data:`PROTOCOL_NOTES`.

    Args:
        run: ``query_id -> hits``; the list order is ignored (ties: trec_eval's rule).
        qrels: ``query_id -> {doc_id: grade}``.
        measures: names in ir_measures syntax, such as ``"nDCG@10"`` or ``"RR@10"``.

    Returns:
        ``measure name -> query_id -> value`` for every query with a judgement of grade > 0;
        a query the run lacks scores 0.

    Raises:
        ValueError: an unknown measure name, or qrels without any relevant judgement.

    Example:
        >>> from ar2.types import Hit
        >>> qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
        >>> per_query({"q1": [Hit("d9", 1.0), Hit("d1", 1.0)]}, qrels, ["RR@10"])
        {'RR@10': {'q1': 0.5, 'q2': 0.0}}
    """
    ir_measures = require("ir_measures")
    parsed = parse_measures(measures)
    qids = _judged_qids(qrels)
    if not qids:
        raise ValueError("the qrels hold no judgement with grade > 0, so nothing can be scored")
    judged = {qid: dict(qrels[qid]) for qid in qids}
    try:
        evaluator = ir_measures.evaluator(list(set(parsed.values())), judged)
    except Exception as err:  # no provider for this measure or parameter combination
        raise ValueError(f"cannot compute {list(parsed)}: {err}") from err
    values: dict[Any, dict[str, float]] = {m: {} for m in parsed.values()}
    for metric in evaluator.iter_calc(_rank_scored(run, qids)):
        if metric.measure in values and metric.query_id in judged:
            values[metric.measure][metric.query_id] = float(metric.value)
    return {
        name: {qid: values[measure].get(qid, 0.0) for qid in qids}
        for name, measure in parsed.items()
    }


def evaluate(run: Run, qrels: Qrels, measures: Sequence[str]) -> dict[str, float]:
    """Mean of :func:`per_query` over the judged queries, keyed by the names as given.

    Example:
        >>> from ar2.types import Hit
        >>> qrels = {"q1": {"d1": 1, "d2": 1}, "q2": {"d3": 1}}
        >>> evaluate({"q1": [Hit("d1", 0.9)]}, qrels, ["R@100", "P@1"])
        {'R@100': 0.25, 'P@1': 0.5}
    """
    return mean_of(per_query(run, qrels, measures))


def mean_of(per_query_values: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Means of :func:`per_query` output (``measure -> query_id -> value``).

    Example:
        >>> mean_of({"RR@10": {"q1": 1.0, "q2": 0.5}})
        {'RR@10': 0.75}
    """
    return {
        name: math.fsum(by_qid.values()) / len(by_qid) for name, by_qid in per_query_values.items()
    }


def _paired_p(system: Sequence[float], baseline: Sequence[float]) -> float:
    """Two-sided paired t-test p-value; 1.0 when the differences are all zero or n < 2."""
    if all(a == b for a, b in zip(system, baseline, strict=True)) or len(system) < 2:
        return 1.0
    stats = require("scipy.stats")
    p = float(stats.ttest_rel(system, baseline).pvalue)
    return 1.0 if math.isnan(p) else p


def _paired_vectors(
    per_query_by_system: Mapping[str, Mapping[str, Mapping[str, float]]],
    system: str,
    baseline: str,
    measure: str,
) -> tuple[list[float], list[float]]:
    """The per-query values of ``system`` and ``baseline`` on ``measure``, aligned by query."""
    try:
        sys_vals, base_vals = (
            per_query_by_system[system][measure],
            per_query_by_system[baseline][measure],
        )
    except KeyError as err:
        raise ValueError(
            f"no per-query values for {err.args[0]!r} ({system} vs {baseline})"
        ) from err
    if set(sys_vals) != set(base_vals):
        raise ValueError(
            f"{system!r} and {baseline!r} were scored on different query sets for {measure!r} "
            f"({len(sys_vals)} vs {len(base_vals)} queries); evaluate both on the same qrels"
        )
    qids = sorted(base_vals)
    return [float(sys_vals[q]) for q in qids], [float(base_vals[q]) for q in qids]


def _compare_row(
    per_query_by_system: Mapping[str, Mapping[str, Mapping[str, float]]],
    system: str,
    baseline: str,
    measure: str,
) -> dict[str, Any]:
    """One unadjusted row of :func:`compare`."""
    sys_vals, base_vals = _paired_vectors(per_query_by_system, system, baseline, measure)
    diffs = [a - b for a, b in zip(sys_vals, base_vals, strict=True)]
    return {
        "system": system,
        "baseline": baseline,
        "measure": measure,
        "mean_diff": math.fsum(diffs) / len(diffs) if diffs else 0.0,
        "p_value": _paired_p(sys_vals, base_vals),
    }


def compare(
    per_query_by_system: Mapping[str, Mapping[str, Mapping[str, float]]],
    baseline: str,
    measures: Sequence[str],
    alpha: float = 0.05,
) -> list[dict[str, Any]]:
    """Paired two-sided t-tests of every other system against ``baseline``, Holm-corrected.

    Args:
        per_query_by_system: ``system -> measure -> query_id -> value`` (:func:`per_query`).
        baseline: the system the others are compared with.
        measures: measures to test; both systems must cover the same queries on each.
        alpha: family-wise error rate.

    Returns:
        Rows: ``system``, ``baseline``, ``measure``, ``mean_diff`` (system - baseline),
        ``p_value`` (1.0 for identical vectors or n < 2), ``p_holm`` (Holm over all rows),
        ``significant`` (``p_holm < alpha``), ``alpha``.

    Example:
        >>> pq = {"bm25": {"RR@10": {"q1": 0.5, "q2": 0.0, "q3": 1.0}},
        ...       "dense": {"RR@10": {"q1": 1.0, "q2": 0.5, "q3": 1.0}}}
        >>> row = compare(pq, "bm25", ["RR@10"])[0]
        >>> row["system"], row["mean_diff"], round(row["p_value"], 4), row["significant"]
        ('dense', 0.3333333333333333, 0.1835, False)
    """
    if isinstance(measures, str) or baseline not in per_query_by_system:
        raise ValueError(f"need a list of measures and a baseline in {list(per_query_by_system)}")
    rows = [
        _compare_row(per_query_by_system, system, baseline, measure)
        for system in per_query_by_system
        if system != baseline
        for measure in dict.fromkeys(measures)
    ]
    return holm(rows, alpha)


def compare_chain(
    per_query_by_system: Mapping[str, Mapping[str, Mapping[str, float]]],
    chain: Sequence[str],
    measures: Sequence[str],
    alpha: float = 0.05,
) -> list[dict[str, Any]]:
    """Paired two-sided t-tests of each system of ``chain`` against the one before it (the
    stages of a training run: start → g0 → ar2-g → ar2-g+d), Holm-corrected over these rows.

    Returns:
        Rows as :func:`compare`'s, ``baseline`` being the system before.

    Example:
        >>> pq = {s: {"RR@10": {"q1": a, "q2": b, "q3": c}} for s, a, b, c in
        ...       [("start", 0.0, 0.5, 0.5), ("g0", 0.5, 0.5, 1.0), ("ar2", 0.5, 1.0, 1.0)]}
        >>> [(r["system"], r["baseline"], round(r["mean_diff"], 4))
        ...  for r in compare_chain(pq, ["start", "g0", "ar2"], ["RR@10"])]
        [('g0', 'start', 0.3333), ('ar2', 'g0', 0.1667)]
    """
    rows = [
        _compare_row(per_query_by_system, system, before, measure)
        for before, system in zip(chain, chain[1:])
        for measure in dict.fromkeys(measures)
    ]
    return holm(rows, alpha)


def holm(rows: list[dict[str, Any]], alpha: float = 0.05) -> list[dict[str, Any]]:
    """``rows`` (each with a ``p_value``) with ``p_holm`` (Holm over all of them),
    ``significant`` and ``alpha``: one family from tests made apart (:func:`compare` Holms
    only its own rows).

    Example:
        >>> rows = holm([{"p_value": 0.01}, {"p_value": 0.04}, {"p_value": 0.03}])
        >>> [(round(r["p_holm"], 2), r["significant"]) for r in rows]
        [(0.03, True), (0.06, False), (0.06, False)]
    """
    if rows:
        multitest = require("statsmodels.stats.multitest")
        _, p_holm, _, _ = multitest.multipletests([r["p_value"] for r in rows], method="holm")
        for row, p in zip(rows, p_holm, strict=True):
            row.update(p_holm=float(p), significant=bool(p < alpha), alpha=alpha)
    return rows


def _first_answer_rank(
    hits: Sequence[Any], answers: AnswerTokens, doc_text: Mapping[str, str], depth: int
) -> int | None:
    """1-based rank of the first of the top-``depth`` docs containing an answer, else None."""
    for rank, doc_id in enumerate(_ranked(hits)[:depth], start=1):
        if doc_id not in doc_text:
            raise ValueError(f"run hit {doc_id!r} has no entry in doc_text; pass every doc's text")
        if contains_answer(dpr_tokens(doc_text[doc_id]), answers):
            return rank
    return None


def answer_accuracy(
    run: Run,
    queries: Sequence[Query],
    doc_text: Mapping[str, str],
    ks: Sequence[int] = (1, 5, 20, 100),
) -> dict[str, float]:
    """DPR's top-k retrieval accuracy: share of queries with an answer in their top-k docs.

    Only queries with at least one answer count; one missing from the run counts as a miss.
    Hits are ranked with the same tie rule as :func:`per_query` (score desc, doc id desc).
    Answers are matched with :func:`ar2.answers.has_answer` (DPR string mode, Karpukhin et al.,
    2020).

    Example:
        >>> from ar2.types import Hit, Query
        >>> qs = [Query("q1", "capital of France?", ("Paris",)), Query("q2", "2+2?", ("4",))]
        >>> texts = {"d1": "Paris is the capital of France.", "d2": "Berlin.", "d3": "2+2=4"}
        >>> run = {"q1": [Hit("d2", 2.0), Hit("d1", 1.0)], "q2": [Hit("d2", 1.0)]}
        >>> answer_accuracy(run, qs, texts, ks=(1, 2))
        {'Acc@1': 0.0, 'Acc@2': 0.5}
    """
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    depth, ranks = max(ks), []
    for query in queries:
        answers = answer_tokens(query.answers)
        if answers:
            ranks.append(_first_answer_rank(run.get(query.id) or [], answers, doc_text, depth))
    if not ranks:
        raise ValueError("no query has an answer, so answer accuracy is undefined")
    return {f"Acc@{k}": sum(r is not None and r <= k for r in ranks) / len(ranks) for k in ks}


TIE = 1e-9
"""Per-query differences smaller than this are ties (:func:`win_tie_loss`)."""


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval over queries: ``(mean, low, high)``.

    Example:
        >>> mean, low, high = mean_ci([0.0, 1.0, 0.0, 1.0])
        >>> mean, round(low, 3), round(high, 3)
        (0.5, -0.419, 1.419)
    """
    n = len(values)
    mean = sum(values) / n if n else float("nan")
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(require("scipy.stats", extra="eval").t.ppf(0.5 + level / 2, n - 1)) * sd
    return mean, mean - half / math.sqrt(n), mean + half / math.sqrt(n)


def win_tie_loss(base: Mapping[str, float], other: Mapping[str, float]) -> tuple[int, int, int]:
    """Queries where ``other`` scores above, equal to and below ``base`` (shared queries).

    Example:
        >>> win_tie_loss({"a": 0.5, "b": 0.5, "c": 1.0}, {"a": 1.0, "b": 0.5, "c": 0.0})
        (1, 1, 1)
    """
    diffs = [other[q] - base[q] for q in base.keys() & other.keys()]
    wins = sum(d > TIE for d in diffs)
    losses = sum(d < -TIE for d in diffs)
    return wins, len(diffs) - wins - losses, losses
