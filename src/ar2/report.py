"""Evaluation reports: JSON, Markdown, per-query TSV, protocol and a chart, written atomically.

``report.json`` is exactly ``{system: {measure: value}}`` (scripts rely on that); everything
else (significance tests, protocol, per-query values) lives in the other files.

Example:
    >>> print(format_table({"bm25": {"nDCG@10": 0.5}, "dense": {"nDCG@10": 0.61234}}))
    system  nDCG@10
    bm25     0.5000
    dense    0.6123
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ar2._io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ar2.charts import report_chart

SIGNIFICANCE_MARK = "†"
"""Marks a value significantly different from the baseline (Holm-corrected)."""


def _measures(results: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Measure names across all systems, in first-seen order."""
    return list(dict.fromkeys(m for by_measure in results.values() for m in by_measure))


def _fmt(value: float | None) -> str:
    """A value with 4 decimals, or ``-`` when missing."""
    return "-" if value is None else f"{value:.4f}"


def format_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """An aligned plain-text table of systems x measures, values with 4 decimals.

    Args:
        results: ``system -> measure -> value``; a missing value prints as ``-``.

    Returns:
        The table, one line per system after a header line, without a trailing newline.

    Example:
        >>> print(format_table({"bm25": {"RR@10": 0.25, "R@100": 0.9}}))
        system   RR@10   R@100
        bm25    0.2500  0.9000
    """
    measures = _measures(results)
    rows = [["system", *measures]]
    rows += [[system, *(_fmt(r.get(m)) for m in measures)] for system, r in results.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def _best(results: Mapping[str, Mapping[str, float]], measure: str) -> float | None:
    """The highest finite value of ``measure`` over the systems, or None."""
    values = [r[measure] for r in results.values() if measure in r and math.isfinite(r[measure])]
    return max(values) if values else None


def _md_escape(text: str) -> str:
    """Escape the characters that would break a markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _results_md(results: Mapping[str, Mapping[str, float]], comparisons: Sequence[dict]) -> str:
    """The systems x measures markdown table: best value bold, significant ones marked."""
    measures = _measures(results)
    marked = {(c["system"], c["measure"]) for c in comparisons if c.get("significant")}
    lines = [
        "| System | " + " | ".join(_md_escape(m) for m in measures) + " |",
        "|---|" + "---:|" * len(measures),
    ]
    for system, by_measure in results.items():
        cells = []
        for m in measures:
            cell = _fmt(by_measure.get(m))
            if m in by_measure and by_measure[m] == _best(results, m):
                cell = f"**{cell}**"
            cells.append(cell + (SIGNIFICANCE_MARK if (system, m) in marked else ""))
        lines.append(f"| {_md_escape(system)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _p(value: float) -> str:
    """A p-value with 3 significant digits."""
    return f"{value:.3g}"


def _significance_md(comparisons: Sequence[dict], against: str = "the baseline") -> str:
    """The significance section: one row per comparison, and the legend."""
    if not comparisons:
        return "No significance tests (a single system, or no baseline given)."
    alpha = comparisons[0].get("alpha", 0.05)
    lines = [
        "| System | Baseline | Measure | Mean diff | p | p (Holm) | Significant |",
        "|---|---|---|---:|---:|---:|:---:|",
    ]
    for c in comparisons:
        mark = SIGNIFICANCE_MARK if c["significant"] else ""
        lines.append(
            f"| {_md_escape(c['system'])} | {_md_escape(c['baseline'])} | "
            f"{_md_escape(c['measure'])} | {c['mean_diff']:+.4f} | {_p(c['p_value'])} | "
            f"{_p(c['p_holm'])} | {mark} |"
        )
    lines += [
        "",
        f"{SIGNIFICANCE_MARK}: significantly different from {against}: paired two-sided "
        f"t-test over the same queries, Holm-corrected across all {len(comparisons)} "
        f"comparisons, p (Holm) < {alpha}. **Bold**: best value per measure.",
    ]
    return "\n".join(lines)


def _protocol_md(protocol: Mapping[str, Any]) -> str:
    """The protocol dict as a bullet list; nested values are shown as JSON."""
    if not protocol:
        return "No protocol given."
    lines = []
    for key, value in protocol.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        lines.append(f"- **{key}**: {text}")
    return "\n".join(lines)


def _report_md(
    results: Mapping[str, Mapping[str, float]],
    protocol: Mapping[str, Any],
    comparisons: Sequence[dict],
    stages: Sequence[dict] = (),
) -> str:
    """The whole ``report.md``."""
    sections = [
        "# Evaluation report",
        "## Results",
        _results_md(results, comparisons),
        "## Significance",
        _significance_md(comparisons),
    ]
    if stages:
        sections += [
            "## Each stage against the one before it",
            _significance_md(stages, "the stage before it"),
        ]
    sections += [
        "## Protocol",
        _protocol_md(protocol),
        "Per-query values: `per_query.tsv`; chart: `report.png`.",
    ]
    return "\n\n".join(sections) + "\n"


def _tsv_field(value: str) -> str:
    """A TSV field, refusing the characters that would break the format."""
    if any(c in value for c in "\t\n\r"):
        raise ValueError(f"{value!r} contains a tab or newline and cannot go in per_query.tsv")
    return value


def _per_query_tsv(per_query: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """``system, measure, qid, value`` lines (full float precision) under a header."""
    lines = ["system\tmeasure\tqid\tvalue"]
    for system, by_measure in per_query.items():
        for measure, by_qid in by_measure.items():
            head = f"{_tsv_field(system)}\t{_tsv_field(measure)}"
            lines += [f"{head}\t{_tsv_field(q)}\t{float(v)!r}" for q, v in by_qid.items()]
    return "\n".join(lines) + "\n"


def per_query_file(split: str = "test") -> str:
    """The file of a split's values per query: ``per_query.tsv`` for the test split (the
    report's), ``per_query.SPLIT.tsv`` for another.

    Example:
        >>> per_query_file(), per_query_file("dev")
        ('per_query.tsv', 'per_query.dev.tsv')
    """
    return "per_query.tsv" if split == "test" else f"per_query.{split}.tsv"


def write_per_query(
    out_dir: str | Path,
    per_query: Mapping[str, Mapping[str, Mapping[str, float]]],
    split: str = "test",
) -> None:
    """``out_dir/`` :func:`per_query_file` (atomically): ``system -> measure -> qid ->
    value``, as :func:`read_per_query` reads it back."""
    atomic_write_text(Path(out_dir) / per_query_file(split), _per_query_tsv(per_query))


def read_per_query(
    out_dir: str | Path, split: str = "test"
) -> dict[str, dict[str, dict[str, float]]]:
    """``system -> measure -> qid -> value`` from a report's :func:`per_query_file` (the
    inverse of what :func:`write_report` writes)."""
    found: dict[str, dict[str, dict[str, float]]] = {}
    path = Path(out_dir) / per_query_file(split)
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    for line in lines:
        system, measure, qid, value = line.split("\t")
        found.setdefault(system, {}).setdefault(measure, {})[qid] = float(value)
    return found


def write_report(
    out_dir: str | Path,
    results: dict[str, dict[str, float]],
    per_query: dict[str, dict[str, dict[str, float]]],
    protocol: dict,
    comparisons: list[dict],
    stages: list[dict] | None = None,
) -> None:
    """Write ``report.json``, ``report.md``, ``per_query.tsv``, ``protocol.json``, ``report.png``.

    Each file is written atomically (temp file + rename). ``report.json`` holds exactly
    ``{system: {measure: value}}`` and nothing else at top level.

    Args:
        out_dir: folder to write into (created if missing; other files there are left alone).
        results: ``system -> measure -> mean value`` (:func:`ar2.evaluate.evaluate`).
        per_query: ``system -> measure -> query_id -> value`` (:func:`ar2.evaluate.per_query`).
        protocol: how the numbers were made, e.g. :data:`ar2.evaluate.PROTOCOL_NOTES` + dataset.
        comparisons: rows of :func:`ar2.evaluate.compare` (may be empty).
        stages: rows of :func:`ar2.evaluate.compare_chain`, each system against the one
            before it (a training run's stages); a section of ``report.md`` and
            ``stage_tests.json`` when given.

    Example:
        >>> import tempfile, json, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> write_report(out, {"bm25": {"RR@10": 0.5}}, {"bm25": {"RR@10": {"q1": 0.5}}},
        ...              {"ties": "score desc, doc id desc"}, [])
        >>> json.loads((out / "report.json").read_text())
        {'bm25': {'RR@10': 0.5}}
    """
    if not results:
        raise ValueError("results is empty: evaluate at least one system before reporting")
    out = Path(out_dir)
    clean = {s: {m: float(v) for m, v in r.items()} for s, r in results.items()}
    write_per_query(out, per_query)
    atomic_write_json(out / "protocol.json", protocol)
    atomic_write_bytes(out / "report.png", report_chart(clean, per_query))
    if stages:
        atomic_write_json(out / "stage_tests.json", stages)
    atomic_write_text(out / "report.md", _report_md(clean, protocol, comparisons, stages or ()))
    atomic_write_json(out / "report.json", clean)
