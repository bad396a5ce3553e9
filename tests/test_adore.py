"""``ar2 adore`` on a tiny run: negatives searched at every step with the query tower as it
then stands, training that moves the query tower and nothing else, an index that serves with
it, resume and refusals, and the command line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ar2.config import ADOREConfig, StageConfig
from ar2.errors import Ar2Error

torch = pytest.importorskip("torch")
faiss = pytest.importorskip("faiss")

from ar2 import losses  # noqa: E402
from ar2.encoders import BiEncoder  # noqa: E402
from ar2.index import FaissIndex  # noqa: E402
from ar2.train.adore import run_adore, step_loss  # noqa: E402
from conftest import (  # noqa: E402
    add_random_ranker,
    assert_per_query_is_the_report,
    check_tuned_teacher,
    killed_at,
    tiny_train_run,
    train_mrr,
)

CFG = ADOREConfig(negatives=10, stage=StageConfig(steps=30, batch_size=8, n_neg=0, lr=1e-3),
                  checkpoint_every=15)  # fmt: skip


def test_each_step_searches_with_the_tower_as_it_stands(tiny_bert: Path) -> None:
    """The distinctive part: the negatives of step s come from a search with the vectors the
    query tower gives at step s, not from a list mined once."""
    encoder = BiEncoder.load(tiny_bert, precision="fp32")
    for module in encoder.query_model.modules():  # no dropout: train and eval passes agree
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    docs = torch.nn.functional.normalize(torch.randn(30, encoder.dim), dim=-1)  # (n, d)
    queries, positives = [f"query {i} about cats" for i in range(4)], [[i] for i in range(4)]
    searched = []

    def search(vectors: np.ndarray, k: int) -> np.ndarray:
        searched.append(vectors.copy())
        return np.argsort(-(vectors @ docs.numpy().T), axis=1)[:, :k]  # (B, k)

    def score(vectors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return 20 * torch.einsum("bd,bcd->bc", vectors, docs[rows])  # (B, C)

    cfg = ADOREConfig(negatives=5, stage=StageConfig(steps=2, batch_size=4, n_neg=0, lr=1e-2))
    loss = step_loss(encoder, queries, positives, search, score, cfg)
    optimiser = torch.optim.SGD(encoder.query_model.parameters(), lr=1.0)
    for step in range(2):
        encoder.query_model.train()
        value = loss(step)
        encoder.query_model.eval()
        with torch.no_grad():
            now = encoder.embed_queries(queries).numpy()
        # the batch is the 4 queries in some order: compare them as a set of vectors
        assert np.allclose(np.sort(searched[step], axis=0), np.sort(now, axis=0), atol=1e-5)
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
    assert not np.allclose(np.sort(searched[0], axis=0), np.sort(searched[1], axis=0))


def test_adore_trains_the_query_tower_only(tmp_path: Path) -> None:
    run, data = tiny_train_run(tmp_path, filler_docs=60)
    out = tmp_path / "adore"
    report = run_adore(run, out, CFG)
    teacher, student = BiEncoder.load(run / "retriever"), BiEncoder.load(out / "retriever")
    assert not student.shared
    docs = ["cats w1 study", "heart w25 risk"]  # the document tower is the run's
    np.testing.assert_allclose(student.encode_docs(docs), teacher.encode_docs(docs), atol=1e-6)
    assert not np.allclose(student.encode_queries(docs), teacher.encode_queries(docs))
    before, after = FaissIndex.load(run / "index"), FaissIndex.load(out / "index")
    assert before.ids == after.ids
    np.testing.assert_array_equal(  # the index is the run's: nothing re-encoded
        before.index.reconstruct_n(0, 5), after.index.reconstruct_n(0, 5)
    )
    assert train_mrr(student, after, data) > train_mrr(
        teacher, before, data
    )  # its training queries
    assert set(report["dev"]["nDCG@10"]) == {"run", "adore"}
    assert report["dev"]["queries"] == 4 and report["test"]["queries"] == 2
    assert json.loads((out / "report.json").read_text()) == report
    assert_per_query_is_the_report(out, report)
    assert f"ar2 serve {out / 'index'}" in (out / "report.md").read_text()
    manifest = json.loads((out / "index" / "manifest.json").read_text())
    assert manifest["encoder"]["towers"] == "separate" and "adore" in manifest
    [stage] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert stage["steps"] == 30


def test_the_index_serves_with_its_query_tower(tmp_path: Path) -> None:
    from ar2.serve import SearchService
    from ar2.types import Query

    run, _ = tiny_train_run(tmp_path, filler_docs=60)
    run_adore(run, tmp_path / "a", CFG)
    service = SearchService.load(tmp_path / "a" / "index")
    student = BiEncoder.load(tmp_path / "a" / "retriever")
    hits = service.search([Query("q", "cats w1")], 5, mode="dense")["q"]
    want = FaissIndex.load(tmp_path / "a" / "index").search(student.encode_queries(["cats w1"]), 5)
    assert [h.doc_id for h in hits] == [h.doc_id for h in want[0]]


def test_resume_refusals_and_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ar2.cli import main

    run, _ = tiny_train_run(tmp_path, filler_docs=60)
    out = tmp_path / "a"
    kill = killed_at(20, losses.rank_weighted_pairwise)
    monkeypatch.setattr(losses, "rank_weighted_pairwise", kill)
    with pytest.raises(KeyboardInterrupt):
        run_adore(run, out, CFG)
    monkeypatch.undo()
    assert (out / "checkpoints" / "adore").is_dir() and not (out / "index").exists()
    with pytest.raises(Ar2Error, match=r"holds an ar2 ADORE query tower \(`ar2 adore`\)"):
        run_adore(run, out, CFG)
    other = ADOREConfig(negatives=20, stage=CFG.stage, checkpoint_every=15)
    with pytest.raises(Ar2Error, match=r"--resume with other settings \(negatives"):
        run_adore(run, out, other, resume=True)
    run_adore(run, out, CFG, resume=True)
    stage = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert len(stage["losses"]) == 30  # 15 before the kill (checkpoint), 15 after
    straight = tmp_path / "b"
    run_adore(run, straight, CFG)
    queries = ["cats w1", "heart w25 risk"]
    np.testing.assert_allclose(  # the resumed run ends where an uninterrupted one does
        BiEncoder.load(out / "retriever").encode_queries(queries),
        BiEncoder.load(straight / "retriever").encode_queries(queries),
        atol=1e-4,
    )
    capsys.readouterr()
    args = ["adore", str(run), "--out", str(tmp_path / "c"), "--set", "stage.steps=3"]
    assert main(args) == 0
    assert "adore - run" in capsys.readouterr().out
    assert main(["adore", str(run), "--out", str(tmp_path / "e"), "--set", "negativs=5"]) == 2
    assert "negativs" in capsys.readouterr().err
    assert main(["adore", str(tmp_path / "data"), "--out", str(tmp_path / "f")]) == 2
    assert "not a finished ar2 train run" in capsys.readouterr().err


class _Ranker:
    """A ranker whose logit is the document's number, counting the pairs it scores."""

    def __init__(self) -> None:
        self.pairs = 0

    def doc_text(self, doc: object) -> str:
        return str(getattr(doc, "text", doc))

    def score_pairs(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        self.pairs += len(pairs)
        return np.array([float(text.split()[-1]) for _, text in pairs], dtype=np.float32)


def test_the_pair_teacher_mixes_its_parts_and_scores_each_pair_once() -> None:
    from ar2.config import TeacherConfig
    from ar2.index import BM25Index
    from ar2.train.teacher import PairTeacher
    from ar2.types import Doc

    docs = [Doc(f"d{i}", f"cats fish {i}" if i % 2 else f"dogs {i}") for i in range(4)]
    vectors = np.eye(4, dtype=np.float32)  # (n, d)
    start = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)  # (Q, d)
    ranker, bm25 = _Ranker(), BM25Index.build(docs)
    weights = {"ranker": 0.5, "retriever": 0.25, "bm25": 0.25}
    cfg = TeacherConfig(kind="ensemble", scale=10.0)
    teacher = PairTeacher(["cats"], [d.id for d in docs], {d.id: d for d in docs}, vectors,
                          start, ranker, bm25, weights, cfg)  # type: ignore[arg-type]  # fmt: skip
    rows = np.array([[3, 0, 1]])
    got = teacher.scores([0], rows).numpy()

    def minmax(x: np.ndarray) -> np.ndarray:
        return (x - x.min()) / (x.max() - x.min())

    logits = np.array([3.0, 0.0, 1.0])
    lexical = bm25.score("cats", ["d3", "d0", "d1"])
    want = 10 * (0.5 * minmax(logits) + 0.25 * minmax(start[0, [3, 0, 1]]) + 0.25 * minmax(lexical))
    np.testing.assert_allclose(got[0], want, rtol=1e-5)
    assert ranker.pairs == 3
    teacher.scores([0], np.array([[1, 3, 2]]))  # one new pair
    assert ranker.pairs == 4
    alone = PairTeacher(["cats"], [d.id for d in docs], {d.id: d for d in docs}, vectors, start,
                        ranker, None, None, TeacherConfig())  # type: ignore[arg-type]  # fmt: skip
    assert alone.scores([0], rows).tolist() == [[3.0, 0.0, 1.0]]  # AR2's: the raw logits


def test_the_teacher_term_is_the_distillation_of_the_searched_top(tiny_bert: Path) -> None:
    """kd_weight adds AR2's L_KD over each query's top kd_depth documents of that step's search,
    scored by the teacher; without it the loss is ADORE's alone."""
    encoder = BiEncoder.load(tiny_bert, precision="fp32")
    for module in encoder.query_model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    docs = torch.nn.functional.normalize(torch.randn(30, encoder.dim), dim=-1)  # (n, d)
    queries, positives = [f"query {i} about cats" for i in range(4)], [[i] for i in range(4)]

    def search(vectors: np.ndarray, k: int) -> np.ndarray:
        return np.argsort(-(vectors @ docs.numpy().T), axis=1)[:, :k]  # (B, k)

    def score(vectors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return 20 * torch.einsum("bd,bcd->bc", vectors, docs[rows])  # (B, C)

    seen = []

    def judge(picks: list[int], rows: np.ndarray) -> torch.Tensor:
        seen.append((list(picks), rows.copy()))
        return torch.from_numpy(-rows.astype(np.float32))  # (B, K): low rows first

    stage = StageConfig(steps=1, batch_size=4, n_neg=0, lr=1e-2)
    plain = ADOREConfig(negatives=6, stage=stage, kd_depth=3)
    taught = ADOREConfig(negatives=6, stage=stage, kd_depth=3, kd_weight=0.5)
    encoder.query_model.eval()
    without = step_loss(encoder, queries, positives, search, score, plain, judge=judge)(0)
    assert not seen  # kd_weight 0: the teacher is never asked
    value = step_loss(encoder, queries, positives, search, score, taught, judge=judge)(0)
    [(picks, rows)] = seen
    with torch.no_grad():
        vectors = encoder.embed_queries([queries[i] for i in picks])  # (B, d)
    np.testing.assert_array_equal(rows, search(vectors.numpy(), 6)[:, :3])
    student = score(vectors, torch.from_numpy(rows))  # (B, 3)
    kd = losses.ar2_distillation(student, torch.from_numpy(-rows.astype(np.float32)))
    assert value.item() == pytest.approx(without.item() + 0.5 * kd.item(), rel=1e-5)


def test_adore_with_a_tuned_teacher_on_a_tiny_run(tmp_path: Path) -> None:
    from ar2.config import TeacherConfig

    run, _ = tiny_train_run(tmp_path, filler_docs=60)
    cfg = ADOREConfig(negatives=10, stage=StageConfig(steps=4, batch_size=8, n_neg=0, lr=1e-3),
                      kd_weight=1.0, kd_depth=5,
                      teacher=TeacherConfig(kind="ensemble", tune=True))  # fmt: skip
    with pytest.raises(Ar2Error, match="no ranker/, which the teacher"):
        run_adore(run, tmp_path / "t", cfg)
    add_random_ranker(run)
    run_adore(run, tmp_path / "t", cfg)
    check_tuned_teacher(tmp_path / "t")
    plain = dataclasses.replace(cfg, kd_weight=0.0)
    run_adore(run, tmp_path / "p", plain)
    assert not (tmp_path / "p" / "teacher.json").exists()
    queries = ["cats w1", "heart w25 risk"]
    assert not np.allclose(  # the teacher's term moved the tower elsewhere
        BiEncoder.load(tmp_path / "t" / "retriever").encode_queries(queries),
        BiEncoder.load(tmp_path / "p" / "retriever").encode_queries(queries),
        atol=1e-5,
    )


def test_teacher_settings_are_checked() -> None:
    from ar2.config import JPQConfig

    with pytest.raises(Ar2Error, match="kd_depth = 30 is more than the 20 documents"):
        ADOREConfig(negatives=20, kd_depth=30, kd_weight=1.0)
    with pytest.raises(Ar2Error, match="kd_weight > 0 in ar2 jpq"):
        JPQConfig(kd_weight=1.0)
