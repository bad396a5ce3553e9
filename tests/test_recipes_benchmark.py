"""benchmarks/recipes.py keeps each arm's result and builds its table from what it kept.

The runs here are folders holding only what the benchmark reads (a finished arm's report and
per-query values), so nothing trains: what is tested is that a kept result is read back
instead of run, stands for a base whose run is gone, is never mixed with another base's, and
that each recipe is tested against ar2 over its own seeds' queries.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from types import ModuleType

import pytest

from ar2.report import write_per_query

QUERIES = [f"q{i}" for i in range(6)]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import recipes

    return recipes


def _run(folder: Path, seed: int, ndcg: list[float], seconds: float = 60.0) -> Path:
    """A finished run as the benchmark reads it: config, metrics, a test report."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"seed": seed}))
    (folder / "report.json").write_text("{}")
    stages = [{"stage": "g0-train", "seconds": 999.0}, {"stage": "round-1", "seconds": seconds}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stages))
    values = {
        row: {"nDCG@10": dict(zip(QUERIES, ndcg)), "R@100": dict.fromkeys(QUERIES, 1.0)}
        for row in ("ar2-g", "ar2-g+d")
    }
    write_per_query(folder, values)
    return folder


def _args(bases: list[Path], tmp: Path) -> argparse.Namespace:
    return argparse.Namespace(
        bases=bases, keep=tmp / "kept", out=tmp / "out", sets=[], data=tmp / "data"
    )


def test_an_arm_is_kept_then_read_back_with_its_run_gone(bench: ModuleType, tmp_path: Path):
    base = _run(tmp_path / "q42", 42, [0.5, 0.6, 0.7, 0.4, 0.3, 0.9])
    _run(tmp_path / "out" / "seed42" / "star", 42, [0.6, 0.7, 0.7, 0.5, 0.3, 0.9], 120.0)
    found = bench.collect(_args([base], tmp_path), ["ar2", "star"])
    kept = tmp_path / "kept" / f"seed42-{bench.fingerprint(base)}"
    assert sorted(p.name for p in kept.iterdir()) == ["ar2.json", "star.json"]
    assert found["star"][42]["seconds"] == 120.0  # the arm's stages after the warm-ups

    for run in (base, tmp_path / "out"):  # the machine and its runs are gone
        for f in run.rglob("*"):
            if f.is_file():
                f.unlink()
    again = bench.collect(_args([kept], tmp_path / "elsewhere"), ["ar2", "star"])
    for name in ("ar2", "star"):
        assert again[name][42]["per_query"] == found[name][42]["per_query"]
    assert bench.table(again) == bench.table(found)
    row = bench.tests(again)["star ar2-g nDCG@10"]
    assert row["mean_diff"] == pytest.approx(0.3 / 6)


def test_a_kept_folder_without_an_arm_asks_for_the_run(bench: ModuleType, tmp_path: Path):
    base = _run(tmp_path / "q42", 42, [0.5] * 6)
    bench.collect(_args([base], tmp_path), ["ar2"])
    kept = next((tmp_path / "kept").iterdir())
    with pytest.raises(SystemExit, match="star.json: not kept.*pass the finished run of seed 42"):
        bench.collect(_args([kept], tmp_path / "again"), ["ar2", "star"])


def test_a_rebuilt_base_that_scores_differently_keeps_apart(bench: ModuleType, tmp_path: Path):
    old = _run(tmp_path / "old", 42, [0.5] * 6)
    new = _run(tmp_path / "new", 42, [0.5] * 5 + [0.6])
    bench.collect(_args([old], tmp_path), ["ar2"])
    bench.collect(_args([new], tmp_path), ["ar2"])
    assert len(list((tmp_path / "kept").iterdir())) == 2
    with pytest.raises(SystemExit, match="a second base of seed 42"):
        bench.collect(_args([old, new], tmp_path), ["ar2"])


def test_each_recipe_is_tested_over_its_own_seeds(bench: ModuleType, tmp_path: Path):
    a42 = [0.5, 0.6, 0.7, 0.4, 0.3, 0.9]
    a43 = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    s42 = [0.6, 0.6, 0.8, 0.4, 0.5, 0.9]
    runs = [_run(tmp_path / "q42", 42, a42), _run(tmp_path / "q43", 43, a43)]
    _run(tmp_path / "out" / "seed42" / "star", 42, s42)
    _run(tmp_path / "out" / "seed43" / "star", 43, [0.2, 0.2, 0.3, 0.5, 0.5, 0.6])
    found = bench.collect(_args(runs, tmp_path), ["ar2", "star"])
    del found["star"][43]  # a recipe measured on one seed so far
    row = bench.tests(found)["star ar2-g nDCG@10"]
    diffs = [s - a for s, a in zip(s42, a42)]
    assert row["mean_diff"] == pytest.approx(statistics.fmean(diffs))  # seed 42's pairs only
    text = bench.table(found)
    assert "| star | ar2-g | 42 |" in text and "| ar2 | ar2-g | 42,43 |" in text


def test_a_measure_an_arm_lacks_shows_a_dash(bench: ModuleType, tmp_path: Path):
    base = _run(tmp_path / "q42", 42, [0.5] * 6)
    arm = _run(tmp_path / "out" / "seed42" / "star", 42, [0.6] * 6)
    values = {r: {"nDCG@10": dict.fromkeys(QUERIES, 0.6)} for r in ("ar2-g", "ar2-g+d")}
    write_per_query(arm, values)  # nDCG@10 only, as a follow-up's report has
    found = bench.collect(_args([base], tmp_path), ["ar2", "star"])
    assert set(bench.tests(found)) == {"star ar2-g nDCG@10", "star ar2-g+d nDCG@10"}
    line = next(x for x in bench.table(found).splitlines() if x.startswith("| star | ar2-g |"))
    assert line.startswith("| star | ar2-g | 42 | 0.6000 ± 0.0000 | +0.1000 (")
    assert line.endswith("| – | – | 1.0 |")
