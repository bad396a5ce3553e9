"""ANNCUR (ar2.anncur): the CUR factorisation against hand-built low-rank scores, the budget
sweep against retrieve-then-rerank, and `ar2 anncur` on a tiny run, killed and resumed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ar2.anncur import item_embeddings, recall_of, rerank_top, subset, sweep
from ar2.config import ANNCURConfig
from ar2.types import Doc


def _low_rank(rows: int, cols: int, rank: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, rank)) @ rng.normal(size=(rank, cols))


def test_cur_embeddings_reproduce_a_low_rank_ranker_from_its_anchor_scores() -> None:
    scores = _low_rank(30, 80, rank=4, seed=1)
    anchors = np.array([3, 17, 40, 41, 79])
    e = item_embeddings(scores[:20], anchors)  # 20 anchor queries
    assert e.shape == (5, 80)
    np.testing.assert_allclose(scores[20:, anchors] @ e, scores[20:], atol=1e-8)
    # Too few anchors for the rank: an approximation, no longer exact
    rough = scores[20:, anchors[:2]] @ item_embeddings(scores[:20], anchors[:2])
    assert not np.allclose(rough, scores[20:], atol=1e-3)


def test_rerank_top_and_recall_by_hand() -> None:
    exact = np.array([[0.1, 0.9, 0.5, 0.7, 0.3]])
    approx = np.array([[5.0, 4.0, 0.0, 3.0, 1.0]])  # shortlist of 3: columns 0, 1, 3
    assert rerank_top(approx, exact, depth=3, k=2).tolist() == [[1, 3]]
    assert recall_of(np.array([[1, 3]]), exact, k=2) == 1.0  # the exact top 2 is {1, 3}
    assert recall_of(np.array([[1, 0]]), exact, k=2) == 0.5


def test_the_sweep_finds_the_rankers_neighbours_where_a_poor_retriever_misses_them() -> None:
    full = _low_rank(40, 200, rank=5, seed=2)
    anchors, exact = full[:30], full[30:]
    retriever = np.random.default_rng(3).normal(size=exact.shape)  # knows nothing
    rows = sweep(anchors, exact, retriever, ANNCURConfig(anchor_items=10, k=10), lambda f: 0.0)
    by = {(r["method"], r["anchor_items"], r["rerank"]): r for r in rows}
    assert by[("anncur", 10, 10)]["recall"] == pytest.approx(1.0)  # rank 5 <= 10 anchors
    assert by[("anncur", 10, 10)]["calls"] == 20
    assert by[("retrieve-then-rerank", 0, 10)]["recall"] < 0.5
    assert by[("retrieve-then-rerank", 0, 200)]["recall"] == 1.0  # the ranker scored everything
    assert {r["anchor_items"] for r in rows if r["method"] == "anncur"} == {10}


def test_the_subset_keeps_every_relevant_document() -> None:
    docs = [Doc(f"d{i}", "x") for i in range(50)]
    picked = subset(docs, {"d7", "d49"}, 10, seed=0)
    assert len(picked) == 10 and {"d7", "d49"} <= {d.id for d in picked}
    assert [d.id for d in picked] == sorted((d.id for d in picked), key=lambda x: int(x[1:]))
    assert subset(docs, set(), None, seed=0) == docs


@pytest.mark.integration
def test_ar2_anncur_on_a_tiny_run_reports_both_methods_and_resumes_without_rescoring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")

    from ar2.cli import main
    from ar2.encoders import CrossEncoder
    from conftest import add_random_ranker, tiny_train_run

    run, _ = tiny_train_run(tmp_path)
    add_random_ranker(run)
    out = tmp_path / "anncur"
    sets = ["--set", "docs=20", "--set", "queries=2", "--set", "anchor_queries=8",
            "--set", "anchor_items=10", "--set", "k=5"]  # fmt: skip
    real, calls = CrossEncoder.score, iter(range(1000))

    def killed(self: Any, query: str, docs: Any) -> Any:  # killed at the 4th anchor query
        if next(calls) == 3:
            raise KeyboardInterrupt
        return real(self, query, docs)

    monkeypatch.setattr(CrossEncoder, "score", killed)
    assert main(["anncur", str(run), "--out", str(out), *sets]) == 130  # interrupted
    assert len(list((out / "scores" / "anchors").glob("*.npy"))) == 3
    monkeypatch.setattr(CrossEncoder, "score", real)
    assert main(["anncur", str(run), "--out", str(out), "--resume", *sets]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (report["queries"], report["docs"], report["anchor_queries"]) == (2, 20, 8)
    methods = {r["method"] for r in report["rows"]}
    assert methods == {"anncur", "retrieve-then-rerank"}
    for r in report["rows"]:
        assert r["calls"] == r["anchor_items"] + r["rerank"] and 0 <= r["recall"] <= 1
        assert 0 <= r["nDCG@10"] <= 1
    assert (out / "anncur.png").read_bytes()[:4] == b"\x89PNG"
    assert "ANNCUR" in capsys.readouterr().out

    def never(self: Any, query: str, docs: Any) -> Any:
        raise AssertionError("a resumed study scored again")

    monkeypatch.setattr(CrossEncoder, "score", never)  # every row is on disk now
    assert main(["anncur", str(run), "--out", str(out), "--resume", *sets]) == 0
