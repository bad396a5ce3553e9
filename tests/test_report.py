"""Checks of ar2.report: file contract, markdown content, TSV, PNG and the terminal table."""

from __future__ import annotations

import csv
import json

import pytest

from ar2.report import format_table, read_per_query, write_report

pytest.importorskip("matplotlib")

RESULTS = {
    "bm25": {"nDCG@10": 0.4, "RR@10": 0.55},
    "dense": {"nDCG@10": 0.61234, "RR@10": 0.5},
}
PER_QUERY = {
    "bm25": {"nDCG@10": {"q1": 0.3, "q2": 0.5}, "RR@10": {"q1": 0.6, "q2": 0.5}},
    "dense": {"nDCG@10": {"q1": 0.62468, "q2": 0.6}, "RR@10": {"q1": 0.5, "q2": 0.5}},
}
PROTOCOL = {"ties": "score desc, then doc id desc", "dataset": "scifact/test", "k": [1, 2]}
COMPARISONS = [
    {
        "system": "dense",
        "baseline": "bm25",
        "measure": "nDCG@10",
        "mean_diff": 0.21234,
        "p_value": 0.0012,
        "p_holm": 0.0024,
        "significant": True,
        "alpha": 0.05,
    },
    {
        "system": "dense",
        "baseline": "bm25",
        "measure": "RR@10",
        "mean_diff": -0.05,
        "p_value": 0.5,
        "p_holm": 0.5,
        "significant": False,
        "alpha": 0.05,
    },
]
FILES = {"report.json", "report.md", "per_query.tsv", "protocol.json", "report.png"}


@pytest.fixture
def report_dir(tmp_path):
    out = tmp_path / "out"
    write_report(out, RESULTS, PER_QUERY, PROTOCOL, COMPARISONS)
    return out


def test_all_files_written_and_no_temp_files_left(report_dir):
    assert {p.name for p in report_dir.iterdir()} == FILES


def test_report_json_is_exactly_system_to_measure_to_value(report_dir):
    data = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    assert list(data) == ["bm25", "dense"]
    assert data == RESULTS


def test_protocol_json_round_trips(report_dir):
    assert json.loads((report_dir / "protocol.json").read_text(encoding="utf-8")) == PROTOCOL


def test_png_is_a_valid_png(report_dir):
    data = (report_dir / "report.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100


def test_per_query_tsv_has_every_value(report_dir):
    with open(report_dir / "per_query.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 8
    assert set(rows[0]) == {"system", "measure", "qid", "value"}
    got = {(r["system"], r["measure"], r["qid"]): float(r["value"]) for r in rows}
    assert got[("dense", "nDCG@10", "q1")] == 0.62468  # full precision, not rounded


def test_per_query_tsv_reads_back_as_written(report_dir):
    assert read_per_query(report_dir) == PER_QUERY  # every value, at full precision


def test_report_md_tables_bold_and_markers(report_dir):
    md = (report_dir / "report.md").read_text(encoding="utf-8")
    assert "| System | nDCG@10 | RR@10 |" in md
    assert "| bm25 | 0.4000 | **0.5500** |" in md  # best RR@10 in bold
    assert "| dense | **0.6123**† | 0.5000 |" in md  # best nDCG@10, significant
    assert "| dense | bm25 | nDCG@10 | +0.2123 | 0.0012 | 0.0024 | † |" in md
    assert "| dense | bm25 | RR@10 | -0.0500 | 0.5 | 0.5 |  |" in md
    assert "†: significantly different" in md and "Holm" in md and "< 0.05" in md


def test_report_md_contains_the_protocol(report_dir):
    md = (report_dir / "report.md").read_text(encoding="utf-8")
    protocol = md.split("## Protocol", 1)[1]
    assert "- **ties**: score desc, then doc id desc" in protocol
    assert "- **dataset**: scifact/test" in protocol
    assert "- **k**: [1, 2]" in protocol


def test_report_without_comparisons(tmp_path):
    write_report(tmp_path, {"only": {"P@5": 0.2}}, {"only": {"P@5": {"q": 0.2}}}, {}, [])
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "No significance tests" in md and "†" not in md
    assert json.loads((tmp_path / "report.json").read_text()) == {"only": {"P@5": 0.2}}


def test_rewrite_replaces_files_and_keeps_other_files(tmp_path):
    (tmp_path / "run.trec").write_text("keep me")
    write_report(tmp_path, RESULTS, PER_QUERY, PROTOCOL, COMPARISONS)
    write_report(tmp_path, {"x": {"P@1": 1.0}}, {"x": {"P@1": {"q": 1.0}}}, {}, [])
    assert json.loads((tmp_path / "report.json").read_text()) == {"x": {"P@1": 1.0}}
    assert (tmp_path / "run.trec").read_text() == "keep me"
    assert {p.name for p in tmp_path.iterdir()} == FILES | {"run.trec"}


def test_write_report_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        write_report(tmp_path, {}, {}, {}, [])
    with pytest.raises(ValueError, match="tab"):
        write_report(tmp_path, {"s": {"M": 1.0}}, {"s": {"M": {"q\t1": 1.0}}}, {}, [])
    assert not (tmp_path / "report.json").exists()


def test_format_table_aligned_four_decimals():
    table = format_table(
        {"bm25": {"nDCG@10": 0.4, "RR@10": 0.55}, "a-long-name": {"nDCG@10": 0.612345}}
    )
    lines = table.splitlines()
    assert lines == [
        "system       nDCG@10   RR@10",
        "bm25          0.4000  0.5500",
        "a-long-name   0.6123       -",
    ]
    assert len({len(line) for line in lines}) == 1
