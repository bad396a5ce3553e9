"""``ar2 repconc`` on a tiny run: Sinkhorn's balanced codes against the exact optimal
assignment (scipy), the loss and its straight-through gradient against a hand computation,
a run whose first stage moves the document tower, the centroids and the codes and whose
second stage keeps the codes, resume after a kill, refusals and the command line."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from ar2.config import RepCONCConfig, StageConfig
from ar2.errors import Ar2Error

torch = pytest.importorskip("torch")
faiss = pytest.importorskip("faiss")

from ar2 import losses  # noqa: E402
from ar2.data.training import TrainingGroup, write_groups  # noqa: E402
from ar2.encoders import BiEncoder  # noqa: E402
from ar2.index import FaissIndex  # noqa: E402
from ar2.train.jpq import PQParts  # noqa: E402
from ar2.train.repconc import balanced_codes, excluded_columns, run_repconc  # noqa: E402
from conftest import (  # noqa: E402
    assert_per_query_is_the_report,
    killed_at,
    tiny_train_run,
    train_mrr,
)


def test_balanced_codes_are_the_optimal_balanced_assignment() -> None:
    """With as many vectors as centroids, Sinkhorn's codes are the permutation of least total
    squared distance (the exact assignment, by scipy); with twice as many, every centroid takes
    two, where the nearest centroid crowds them. (At a small entropy and enough iterations:
    at RepCONC's 0.003 the plan splits its mass where two assignments cost nearly the same,
    and its argmax may then give one centroid two vectors.)"""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(0)
    for n, k in ((8, 8), (16, 8)):
        centroids = rng.standard_normal((2, k, 3)).astype(np.float32)  # (m, K, d / m)
        vectors = (0.3 * rng.standard_normal((n, 2, 3)) + centroids[None, :, 0]).astype(
            np.float32
        )  # (N, m, d / m): near centroid 0 of each book
        codes = balanced_codes(torch.from_numpy(vectors), torch.from_numpy(centroids),
                               epsilon=0.001, iterations=3000).numpy()  # fmt: skip
        for book in range(2):
            cost = ((vectors[:, book, None, :] - centroids[book][None]) ** 2).sum(-1)  # (N, K)
            assert np.bincount(cost.argmin(1), minlength=k).max() > n // k  # nearest crowds
            assert np.bincount(codes[:, book], minlength=k).tolist() == [n // k] * k
            tiled = np.tile(cost, (1, n // k))  # each centroid offered n / k times
            rows, cols = linear_sum_assignment(tiled)
            best = tiled[rows, cols].sum()
            ours = cost[np.arange(n), codes[:, book]].sum()
            assert ours == pytest.approx(best, rel=1e-5)


def test_the_model_quantizes_a_crowded_batch_over_distinct_centroids() -> None:
    """The step's reconstructions come from the balanced codes: eight documents nearest one
    centroid are spread over eight (the nearest centroid would give all eight the same)."""
    from ar2.train.repconc import RepCONCModel

    rng = np.random.default_rng(1)
    centroids = rng.standard_normal((2, 256, 2)).astype(np.float32)  # (m, K, d / m)
    parts = PQParts(np.eye(4, dtype=np.float32), centroids, np.zeros((0, 2), np.uint8))
    model = RepCONCModel(torch.nn.Identity(), None, parts)
    crowd = centroids[:, 0].reshape(1, 4) + 0.01 * rng.standard_normal((8, 4))  # (8, d)
    got = model.quantize(torch.from_numpy(crowd.astype(np.float32)), CFG)  # (8, d)
    for book in range(2):
        piece = got[:, 2 * book : 2 * book + 2].detach().numpy()  # (8, d / m)
        assert len({tuple(row) for row in piece}) == 8
        assert all(any(np.allclose(row, c) for c in centroids[book]) for row in piece)


def test_the_loss_and_its_straight_through_gradient_by_hand() -> None:
    """``L = CE(scale q . d~, excluded left out) + w mean ||d~ - d||^2``; the ranking part's
    gradient reaches the continuous documents as it reaches the quantised ones."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)  # (B, d)
    d = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], requires_grad=True)  # (N, d)
    dq = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.4]], requires_grad=True)  # (N, d)
    targets = torch.tensor([0, 1])
    excluded = torch.tensor([[False, False, True], [False, False, False]])
    got = losses.constrained_quantization(queries=q, documents=d, quantized=dq, targets=targets,
                                          excluded=excluded, scale=2.0, mse_weight=0.5)  # fmt: skip
    # query 0 scores d~_0, d~_1 (d~_2 left out): 2, 0; query 1 scores 0, 2, 0.8
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    ce1 = -math.log(math.exp(2) / (1 + math.exp(2) + math.exp(0.8)))
    mse = (0.01 + 0.01 + 0.04 + 0.04 + 0.01 + 0.01) / 3
    assert got.item() == pytest.approx((ce0 + ce1) / 2 + 0.5 * mse, rel=1e-6)
    ranking = losses.constrained_quantization(queries=q, documents=d, quantized=dq,
                                              targets=targets, excluded=excluded, scale=2.0,
                                              mse_weight=0.0)  # fmt: skip
    d_grad, dq_grad = torch.autograd.grad(ranking, [d, dq])
    assert d_grad.abs().sum() > 0  # without the straight-through estimator: no gradient
    torch.testing.assert_close(d_grad, dq_grad)
    with pytest.raises(ValueError, match="own target"):
        losses.constrained_quantization(queries=q, documents=d, quantized=dq, targets=targets,
                                        excluded=~excluded, scale=1.0, mse_weight=0.0)  # fmt: skip


def test_excluded_columns_leave_out_other_positives_and_repeats() -> None:
    ids = ["a", "x", "b", "a", "x"]  # query 0: (a, x); query 1: (b, a, x) is not a group, so
    relevant = [frozenset({"a", "b"}), frozenset({"b"})]  # groups of 2 over 4 columns below
    got = excluded_columns(ids[:4], relevant, 2).tolist()
    assert got == [[False, False, True, True], [False, False, False, True]]


CFG = RepCONCConfig(
    m=8, negatives=20, checkpoint_every=4,
    stage=StageConfig(steps=8, batch_size=8, n_neg=0, lr=1e-3, head_lr=1e-2),
    constrained=StageConfig(steps=8, batch_size=8, n_neg=3, lr=1e-3, head_lr=1e-2),
)  # fmt: skip


def _run(root: Path) -> tuple[Path, Path]:
    """A finished tiny run of 288 documents with round-0 groups (negatives: other documents)."""
    from ar2.data.beir import load_corpus, load_qrels, load_queries

    run, data = tiny_train_run(root, filler_docs=260)
    dev = set(json.loads((run / "dev_split.json").read_text())["queries"])
    qrels = load_qrels(data / "qrels" / "train.tsv")
    ids = [d.id for d in load_corpus(data / "corpus.jsonl")]
    queries = [q for q in load_queries(data / "queries.jsonl") if q.id in qrels and q.id not in dev]
    groups = [TrainingGroup(q, tuple(qrels[q.id]), tuple(d for d in ids[:40]
                                                         if d not in qrels[q.id]))
              for q in queries]  # fmt: skip
    write_groups(run / "mined" / "round-0", groups, {"round": 0})
    return run, data


def test_repconc_trains_the_codes_then_keeps_them(tmp_path: Path) -> None:
    run, data = _run(tmp_path)
    out = tmp_path / "r"
    report = run_repconc(run, out, CFG)
    posthoc = PQParts.of(FaissIndex.load(out / "posthoc").index)
    constrained = PQParts.of(FaissIndex.load(out / "constrained" / "index").index)
    final = PQParts.of(FaissIndex.load(out / "index").index)
    jpq = PQParts.of(FaissIndex.load(out / "jpq" / "index").index)
    assert np.array_equal(posthoc.rotation, constrained.rotation)  # the rotation stays
    assert not np.allclose(posthoc.centroids, constrained.centroids)  # stage 1 moves them
    assert (posthoc.codes != constrained.codes).any()  # and recodes the corpus
    assert np.array_equal(constrained.codes, final.codes)  # stage 2 keeps the codes
    assert np.array_equal(posthoc.codes, jpq.codes)  # JPQ keeps FAISS's
    teacher = BiEncoder.load(run / "retriever")
    first, student = (BiEncoder.load(out / f) for f in ("constrained/retriever", "retriever"))
    docs = ["cats w1 study", "heart w25 risk"]
    assert not np.allclose(first.encode_docs(docs), teacher.encode_docs(docs))  # trained
    np.testing.assert_allclose(student.encode_docs(docs), first.encode_docs(docs), atol=1e-6)
    assert train_mrr(student, FaissIndex.load(out / "index"), data) > train_mrr(
        teacher, FaissIndex.load(out / "posthoc"), data
    )
    assert set(report["test"]["nDCG@10"]) == {"uncompressed", "opq-pq", "jpq", "repconc"}
    assert set(report["dev"]["tests"]) == {
        "repconc - jpq",
        "repconc - opq-pq",
        "repconc - uncompressed",
        "jpq - uncompressed",
    }
    assert json.loads((out / "report.json").read_text()) == report
    assert_per_query_is_the_report(out, report)
    stages = [json.loads(x)["stage"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert stages == ["jpq", "repconc", "repconc-jpq"]
    manifest = json.loads((out / "index" / "manifest.json").read_text())
    assert manifest["factory"] == "OPQ8,PQ8x8" and "jpq" not in manifest
    block = manifest["repconc"]
    assert block["stage"] == "repconc-jpq" and block["config"]["mse_weight"]
    assert not (out / "index" / "vectors.npy").exists()


def test_resume_after_a_kill_and_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, _ = _run(tmp_path)
    out = tmp_path / "r"
    kill = killed_at(5, losses.constrained_quantization)
    monkeypatch.setattr(losses, "constrained_quantization", kill)
    with pytest.raises(KeyboardInterrupt):
        run_repconc(run, out, CFG)
    monkeypatch.undo()
    assert (out / "checkpoints" / "repconc").is_dir() and not (out / "constrained").exists()
    with pytest.raises(Ar2Error, match=r"RepCONC compression \(`ar2 repconc`\)\. Fix: pass"):
        run_repconc(run, out, CFG)
    other = dataclasses.replace(CFG, mse_weight=0.1)
    with pytest.raises(Ar2Error, match=r"--resume with other settings \(mse_weight"):
        run_repconc(run, out, other, resume=True)
    run_repconc(run, out, CFG, resume=True)
    uninterrupted = tmp_path / "u"
    run_repconc(run, uninterrupted, CFG)
    np.testing.assert_allclose(  # the resumed run ends where an uninterrupted one does
        np.load(out / "constrained" / "centroids.npy"),
        np.load(uninterrupted / "constrained" / "centroids.npy"), atol=1e-5,
    )  # fmt: skip
    shutil.rmtree(run / "mined")
    with pytest.raises(Ar2Error, match="no mined/round-0/groups.jsonl"):
        run_repconc(run, tmp_path / "x", CFG)
    assert not (tmp_path / "x").exists()
    with pytest.raises(Ar2Error, match="constrained.n_neg = 0"):
        dataclasses.replace(CFG, constrained=StageConfig(n_neg=0))


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ar2.cli import main

    run, _ = _run(tmp_path)
    args = ["repconc", str(run), "--out", str(tmp_path / "r"), "--m", "8", "--set",
            "stage.steps=2", "--set", "constrained.steps=2", "--set", "negatives=10"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "repconc - jpq" in printed and f"ar2 serve {tmp_path / 'r' / 'index'}" in printed
    record = json.loads((tmp_path / "r" / "repconc.json").read_text())
    assert record["config"]["constrained"]["steps"] == 2
    assert main(["repconc", str(run), "--out", str(tmp_path / "e"), "--set", "epsilon=0"]) == 2
    assert "epsilon" in capsys.readouterr().err
