"""``ar2 jpq`` on a tiny run: the pairwise loss against a hand computation, the torch scores
against FAISS's own for the same codes and centroids, training that moves the centroids and
the query tower but never the codes or the document tower, an index that serves, resume and
refusals."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ar2.config import JPQConfig, StageConfig
from ar2.errors import Ar2Error

torch = pytest.importorskip("torch")
faiss = pytest.importorskip("faiss")

from ar2 import losses  # noqa: E402
from ar2.encoders import BiEncoder  # noqa: E402
from ar2.index import FaissIndex  # noqa: E402
from ar2.train.jpq import JPQModel, PQParts, pq_factory, run_jpq, set_centroids  # noqa: E402
from conftest import (  # noqa: E402
    assert_per_query_is_the_report,
    killed_at,
    tiny_train_run,
    train_mrr,
)


def _hand_loss(scores: list[list[float]], relevant: list[list[bool]], valid: list[list[bool]]):
    per_query = []
    for s, rel, ok in zip(scores, relevant, valid):
        terms = [
            abs(1 / (j + 1) - 1 / (i + 1)) * math.log1p(math.exp(s[j] - s[i]))
            for i, j in itertools.product(range(len(s)), repeat=2)
            if ok[i] and ok[j] and rel[i] and not rel[j]
        ]
        if terms:
            per_query.append(sum(terms) / len(terms))
    return sum(per_query) / len(per_query)


def test_the_pairwise_loss_is_the_hand_computed_one() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 6, generator=gen, requires_grad=True)
    relevant = torch.tensor([[False, True, False, False, True, False],
                             [True, False, False, False, False, False],
                             [False] * 6])  # fmt: skip
    valid = torch.tensor([[True] * 6, [True, True, True, False, False, False], [True] * 6])
    got = losses.rank_weighted_pairwise(scores=scores, relevant=relevant, valid=valid)
    want = _hand_loss(scores.tolist(), relevant.tolist(), valid.tolist())
    assert got.item() == pytest.approx(want, rel=1e-5)
    got.backward()
    grad = scores.grad
    assert grad is not None
    assert grad[0, 1] < 0 and grad[0, 0] > 0  # descent raises the relevant, lowers the other
    assert torch.all(grad[1, 3:] == 0) and torch.all(grad[2] == 0)  # padding, and no pairs
    none = losses.rank_weighted_pairwise(scores=scores, relevant=torch.zeros_like(relevant))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match=r"must both be \(B, C\)"):
        losses.rank_weighted_pairwise(scores=scores, relevant=relevant[:, :2])


def _opq_index(n: int = 300, d: int = 16, m: int = 4) -> tuple[object, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, d)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.index_factory(d, pq_factory(m), faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    return index, vectors


def test_the_model_scores_what_faiss_scores() -> None:
    """The rotation, centroids and codes read out of FAISS give FAISS's own scores, before and
    after the centroids are changed (and written back)."""
    index, vectors = _opq_index()
    parts = PQParts.of(index)
    assert parts.rotation.shape == (16, 16) and parts.centroids.shape == (4, 256, 4)
    assert parts.codes.shape == (300, 4)
    model = JPQModel(torch.nn.Identity(), parts)
    queries = vectors[:5] + 0.1
    faiss.downcast_index(index.index).pq.sync_transposed_centroids()  # the cached layout too
    for _ in range(2):
        got, rows = index.search(queries, 20)  # (5, 20)
        ours = model.scores(torch.from_numpy(queries), torch.from_numpy(rows)).detach().numpy()
        np.testing.assert_allclose(ours, got, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            model.centroids.mul_(1.5).add_(0.01)  # new centroids, the same codes
        set_centroids(index, model.centroids.detach().numpy())
    assert np.array_equal(PQParts.of(index).codes, parts.codes)


CFG = JPQConfig(m=8, negatives=20, stage=StageConfig(steps=30, batch_size=8, n_neg=0, lr=1e-3,
                head_lr=1e-2), checkpoint_every=15)  # fmt: skip


def test_jpq_trains_the_centroids_and_the_query_tower_only(tmp_path: Path) -> None:
    run, data = tiny_train_run(tmp_path, filler_docs=260)
    out = tmp_path / "jpq"
    report = run_jpq(run, out, CFG)
    posthoc, trained = FaissIndex.load(out / "posthoc"), FaissIndex.load(out / "index")
    before, after = PQParts.of(posthoc.index), PQParts.of(trained.index)
    assert np.array_equal(before.codes, after.codes)  # fixed codes
    assert np.array_equal(before.rotation, after.rotation)
    assert not np.allclose(before.centroids, after.centroids)  # trained centroids
    teacher, student = BiEncoder.load(run / "retriever"), BiEncoder.load(out / "retriever")
    assert not student.shared
    docs = ["cats w1 study", "heart w25 risk"]  # the document tower is the run's
    np.testing.assert_allclose(student.encode_docs(docs), teacher.encode_docs(docs), atol=1e-6)
    assert not np.allclose(student.encode_queries(docs), teacher.encode_queries(docs))
    # the training queries' positives rank higher than under the post-hoc compression
    assert train_mrr(student, trained, data) > train_mrr(teacher, posthoc, data)
    assert report["bytes_per_doc"] == {"uncompressed": 4 * 32, "opq-pq": 8, "jpq": 8}
    assert set(report["dev"]["nDCG@10"]) == {"uncompressed", "opq-pq", "jpq"}
    assert report["dev"]["queries"] == 4 and report["test"]["queries"] == 2
    assert json.loads((out / "report.json").read_text()) == report
    assert_per_query_is_the_report(out, report)
    assert f"ar2 serve {out / 'index'}" in (out / "report.md").read_text()
    manifest = json.loads((out / "index" / "manifest.json").read_text())
    assert manifest["factory"] == "OPQ8,PQ8x8" and manifest["jpq"]["trained"]
    assert not (out / "index" / "vectors.npy").exists()  # no float vectors: the point
    [stage] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert stage["steps"] == 30


def test_the_index_serves_with_its_query_tower(tmp_path: Path) -> None:
    from ar2.serve import SearchService
    from ar2.types import Query

    run, _ = tiny_train_run(tmp_path, filler_docs=260)
    run_jpq(run, tmp_path / "j", CFG)
    service = SearchService.load(tmp_path / "j" / "index")
    student = BiEncoder.load(tmp_path / "j" / "retriever")
    hits = service.search([Query("q", "cats w1")], 5, mode="dense")["q"]
    want = FaissIndex.load(tmp_path / "j" / "index").search(student.encode_queries(["cats w1"]), 5)
    assert [h.doc_id for h in hits] == [h.doc_id for h in want[0]]
    assert service.docs[hits[0].doc_id].text  # texts come with the index


def test_resume_and_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, _ = tiny_train_run(tmp_path, filler_docs=260)
    out = tmp_path / "j"
    kill = killed_at(20, losses.rank_weighted_pairwise)
    monkeypatch.setattr(losses, "rank_weighted_pairwise", kill)
    with pytest.raises(KeyboardInterrupt):
        run_jpq(run, out, CFG)
    monkeypatch.undo()
    assert (out / "checkpoints" / "jpq").is_dir() and not (out / "index").exists()
    held = r"holds an ar2 JPQ compression \(`ar2 jpq`\)\. Fix: pass --resume"
    with pytest.raises(Ar2Error, match=held):
        run_jpq(run, out, CFG)
    other = JPQConfig(m=4, negatives=20, stage=CFG.stage, checkpoint_every=15)
    with pytest.raises(Ar2Error, match=r"--resume with other settings \(m"):
        run_jpq(run, out, other, resume=True)
    run_jpq(run, out, CFG, resume=True)
    stage = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert len(stage["losses"]) == 30  # 15 before the kill (checkpoint), 15 after
    uninterrupted = tmp_path / "k"
    run_jpq(run, uninterrupted, CFG)
    np.testing.assert_allclose(  # the resumed run ends where an uninterrupted one does
        PQParts.of(FaissIndex.load(out / "index").index).centroids,
        PQParts.of(FaissIndex.load(uninterrupted / "index").index).centroids,
        atol=1e-5,
    )
    with pytest.raises(Ar2Error, match="m = 5 does not divide the vectors' dimension 32"):
        run_jpq(run, tmp_path / "x", JPQConfig(m=5))
    assert not (tmp_path / "x").exists()  # refused before anything is written: the same --out
    run_jpq(run, tmp_path / "x", dataclasses.replace(CFG, stage=StageConfig(steps=2)))


def test_too_few_documents_and_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ar2.cli import main

    small, _ = tiny_train_run(tmp_path / "small")
    with pytest.raises(Ar2Error, match="40 documents: 8-bit PQ needs at least 256"):
        run_jpq(small, tmp_path / "x", CFG)
    run, _ = tiny_train_run(tmp_path / "big", filler_docs=260)
    args = ["jpq", str(run), "--out", str(tmp_path / "j"), "--m", "8",
            "--set", "stage.steps=3", "--set", "negatives=10"]  # fmt: skip
    assert main(args) == 0
    assert json.loads((tmp_path / "j" / "jpq.json").read_text())["config"]["stage"]["steps"] == 3
    capsys.readouterr()
    assert main(["jpq", str(run), "--out", str(tmp_path / "e"), "--set", "negativs=5"]) == 2
    assert "negativs" in capsys.readouterr().err
    assert main(["jpq", str(tmp_path / "big" / "data"), "--out", str(tmp_path / "f")]) == 2
    assert "not a finished ar2 train run" in capsys.readouterr().err


def test_epochs_size_the_training(tmp_path: Path) -> None:
    run, _ = tiny_train_run(tmp_path, filler_docs=260)
    stage = StageConfig(steps=100, batch_size=8, n_neg=0, lr=1e-3, head_lr=1e-2, epochs=2)
    run_jpq(run, tmp_path / "j", dataclasses.replace(CFG, stage=stage))
    [line] = (tmp_path / "j" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line)["steps"] == 6  # 2 passes over 24 training queries (28 less 4 dev)
