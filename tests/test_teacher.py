"""The retriever's teacher (issue 14): the ranker as in AR2, or an ensemble measured on dev."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ar2.config import TeacherConfig

pytest.importorskip("torch")


def test_the_grid_covers_every_weighting_that_sums_to_one_ranker_first() -> None:
    from ar2.train.teacher import grid

    points = grid()
    assert len(points) == 66 and len({tuple(p.values()) for p in points}) == 66
    assert all(abs(sum(p.values()) - 1) < 1e-9 for p in points)
    assert points[0] == {"ranker": 1.0, "retriever": 0.0, "bm25": 0.0}
    assert {"ranker": 0.0, "retriever": 1.0, "bm25": 0.0} in points


def test_bm25_scores_of_given_docs_are_those_its_search_ranks_by() -> None:
    from ar2.index import BM25Index
    from ar2.types import Doc

    docs = [Doc(f"d{i}", text) for i, text in enumerate(
        ["cats eat fish", "dogs eat meat", "cats chase mice and cats sleep", "birds sing"]
    )]  # fmt: skip
    index = BM25Index.build(docs)
    hits = index.search(["cats eat"], k=4)[0]
    got = index.score("cats eat", [h.doc_id for h in hits])
    np.testing.assert_allclose(got, [h.score for h in hits], rtol=1e-6)
    assert index.score("cats eat", ["d3"]).tolist() == [0.0]
    assert index.score("zebra", ["d0", "d1"]).tolist() == [0.0, 0.0]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    from ar2.encoders import BiEncoder, CrossEncoder
    from conftest import build_tiny_bert

    path = build_tiny_bert(tmp_path_factory.mktemp("tiny") / "m")
    with pytest.warns(UserWarning):
        ranker = CrossEncoder.load(path)
    return BiEncoder.load(path), ranker


def _batch() -> Any:
    from ar2.train.steps import Batch
    from ar2.types import Doc, Query

    queries = [Query("q1", "alpha beta"), Query("q2", "gamma")]
    texts = ["alpha beta", "alpha", "delta", "gamma", "beta", "alpha gamma"]
    return Batch(queries, [Doc(f"d{i}", t) for i, t in enumerate(texts)])


def test_the_ranker_teacher_is_the_rankers_raw_logits(models: tuple[Any, Any]) -> None:
    from ar2.config import AR2Config
    from ar2.train.steps import ranker_scores
    from ar2.train.teacher import Teacher

    _, ranker = models
    got = Teacher(ranker, TeacherConfig()).batch_scores(_batch(), AR2Config())
    assert np.allclose(got.numpy(), ranker_scores(ranker, _batch()).detach().numpy(), atol=1e-5)


def test_an_ensemble_teacher_is_the_normalised_mix_of_its_parts(models: tuple[Any, Any]) -> None:
    from ar2.config import AR2Config
    from ar2.fusion import minmax
    from ar2.index import BM25Index
    from ar2.train.steps import ranker_scores
    from ar2.train.teacher import Teacher

    prior, ranker = models
    batch = _batch()
    bm25 = BM25Index.build(batch.docs)
    weights = {"ranker": 0.5, "retriever": 0.3, "bm25": 0.2}
    cfg = TeacherConfig(kind="ensemble", scale=4.0, **weights)
    got = Teacher(ranker, cfg, weights, prior, bm25).batch_scores(batch, AR2Config())

    logits = ranker_scores(ranker, batch).detach().numpy()
    q, d = prior.encode_queries(batch.queries), prior.encode_docs(batch.docs)
    for b, query in enumerate(batch.queries):
        group = batch.docs[3 * b : 3 * b + 3]
        dense = d[3 * b : 3 * b + 3] @ q[b]
        lexical = bm25.score(query.text, [doc.id for doc in group])
        by_hand = 4.0 * (0.5 * minmax(logits[b]) + 0.3 * minmax(dense) + 0.2 * minmax(lexical))
        np.testing.assert_allclose(got[b].numpy(), by_hand, atol=1e-4)


def test_an_ensemble_with_no_weight_is_refused_unless_tuned() -> None:
    from ar2.errors import Ar2Error

    with pytest.raises(Ar2Error, match="Fix:"):
        TeacherConfig(kind="ensemble", ranker=0.0)
    assert TeacherConfig(kind="ensemble", ranker=0.0, tune=True).tune


def test_a_tuned_ensemble_is_measured_on_dev_and_used_by_the_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end on toy data: the teacher's dev record, its metrics line, and the weights
    the round's retriever steps used."""
    from ar2.config import load_ar2_config, load_toml
    from ar2.train.ar2 import run_ar2
    from conftest import build_tiny_bert, write_train_toy

    data = write_train_toy(tmp_path / "data")
    model = build_tiny_bert(tmp_path / "tiny")
    preset = Path(__file__).parents[1] / "src" / "ar2" / "presets" / "toy.toml"
    raw = load_toml(preset) | {"retriever_model": str(model), "ranker_model": str(model)}
    cfg = load_ar2_config(raw | {"teacher": {"kind": "ensemble", "tune": True}}, "toy")
    out = tmp_path / "run"
    from ar2.train.teacher import Teacher

    used = []
    original = Teacher.batch_scores

    def spy(self: Teacher, batch: Any, run_cfg: Any) -> Any:
        used.append(self.weights)
        return original(self, batch, run_cfg)

    monkeypatch.setattr(Teacher, "batch_scores", spy)
    run_ar2(data, out, cfg)
    steps = cfg.retriever.steps
    assert len(used) == 2 * steps
    for r in (1, 2):
        record = json.loads((out / "dev_runs" / f"round-{r}.teacher.json").read_text())
        values = [point["nDCG@10"] for point in record["grid"]]
        assert len(values) == 66 and record["dev"]["T"] == max(values)
        assert record["dev"]["T"] >= record["dev"]["retriever"]  # on the grid: it is no weaker
        assert record["grid"][0]["weights"] == {"ranker": 1.0, "retriever": 0.0, "bm25": 0.0}
        assert used[(r - 1) * steps : r * steps] == [record["weights"]] * steps
    stages = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    teacher = [s for s in stages if s["stage"].startswith("teacher-")]
    assert [s["stage"] for s in teacher] == ["teacher-1", "teacher-2"]
    order = [s["stage"] for s in stages]
    assert order.index("teacher-1") < order.index("round-1-retriever")
