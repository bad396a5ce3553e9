"""``ar2 distill-query`` on a tiny run: the student keeps the chosen layers of the teacher's,
learns its vectors (the loss against a hand computation, the distance shrinking), leaves the
document tower and index as they were, reports both, and resumes or refuses as runs do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ar2.config import DistillConfig, StageConfig
from ar2.errors import Ar2Error

torch = pytest.importorskip("torch")

from ar2 import losses  # noqa: E402
from ar2.encoders import BiEncoder  # noqa: E402
from ar2.train.distill import kept_layers, run_distill, student_tower  # noqa: E402
from conftest import build_tiny_bert, killed_at, tiny_train_run  # noqa: E402


def test_the_loss_is_the_hand_computed_one() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    a, b = s.numpy().astype(np.float64), t.numpy().astype(np.float64)
    squared = ((a - b) ** 2).sum(1).mean()
    cosine = ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean()
    got = losses.vector_distillation(student=s, teacher=t).item()
    assert got == pytest.approx(squared + 1 - cosine, rel=1e-5)
    same = losses.vector_distillation(student=t, teacher=t).item()
    assert same == pytest.approx(0.0, abs=1e-6)
    s.requires_grad_(True)
    losses.vector_distillation(student=s, teacher=t.requires_grad_(True)).backward()
    assert t.grad is None  # the teacher is a constant


def test_the_student_starts_from_the_kept_layers(tmp_path: Path) -> None:
    teacher = BiEncoder.load(build_tiny_bert(tmp_path / "bert"), precision="fp32")
    tower = teacher.query_model
    student = student_tower(tower, 1)
    assert len(student.encoder.layer) == student.config.num_hidden_layers == 1
    assert kept_layers(2, 1) == [1]
    for (name, got), (_, want) in zip(student.encoder.layer[0].state_dict().items(),
                                      tower.encoder.layer[1].state_dict().items()):  # fmt: skip
        assert torch.equal(got, want), name
    assert student.encoder.layer[0] is not tower.encoder.layer[1]  # a copy: the teacher stays
    with pytest.raises(Ar2Error, match="layers = 3: the query tower has 2. Fix: choose 1 to 2"):
        student_tower(tower, 3)


CFG = DistillConfig(
    layers=1,
    pseudo_queries=40,
    stage=StageConfig(steps=40, batch_size=16, n_neg=0, lr=1e-3),
    latency_queries=3,
    checkpoint_every=20,
)


def test_distillation_learns_the_teachers_vectors_and_keeps_the_index(tmp_path: Path) -> None:
    run, _ = tiny_train_run(tmp_path)
    out = tmp_path / "distilled"
    report = run_distill(run, out, CFG)
    teacher = BiEncoder.load(run / "retriever")
    student = BiEncoder.load(out / "retriever")
    assert not student.shared and student.query_model.config.num_hidden_layers == 1
    texts = [json.loads(line) for line in (out / "texts.jsonl").read_text().splitlines()]
    assert len(texts) == 24 + 40  # 28 train queries less 4 dev ones, and the pseudo-queries
    assert "t2 w8" not in texts and "cats w1" in texts  # dev queries are not trained on
    want = teacher.encode_queries(texts)
    untrained = BiEncoder(teacher.doc_model, teacher.tokenizer, teacher.config,
                          student_tower(teacher.query_model, 1))  # fmt: skip
    before = np.linalg.norm(untrained.encode_queries(texts) - want, axis=1).mean()
    after = np.linalg.norm(student.encode_queries(texts) - want, axis=1).mean()
    assert after < 0.7 * before, (before, after)
    docs = ["cats w1 study", "heart w25 risk"]  # the document tower is the teacher's
    np.testing.assert_allclose(student.encode_docs(docs), teacher.encode_docs(docs), atol=1e-6)
    assert set(report) >= {"dev", "test", "latency_ms_p50"} and report["dev"]["queries"] == 4
    assert json.loads((out / "report.json").read_text()) == report
    assert "ar2 serve RUN --retriever" in (out / "report.md").read_text()
    [stage] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert stage["steps"] == 40


def test_the_run_s_index_serves_the_student(tmp_path: Path) -> None:
    from ar2.retrievers import dense_from_folder
    from ar2.types import Query

    run, _ = tiny_train_run(tmp_path)
    run_distill(run, tmp_path / "d", CFG)
    served = dense_from_folder(run / "index", tmp_path / "d" / "retriever")
    assert served.encoder.query_model.config.num_hidden_layers == 1
    assert len(served.retrieve([Query("q", "cats w1")], 3)["q"]) == 3


def test_resume_and_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, _ = tiny_train_run(tmp_path)
    out = tmp_path / "d"
    monkeypatch.setattr(losses, "vector_distillation", killed_at(25, losses.vector_distillation))
    with pytest.raises(KeyboardInterrupt):
        run_distill(run, out, CFG)
    monkeypatch.undo()
    assert (out / "checkpoints" / "distill-query").is_dir() and not (out / "retriever").exists()
    held = r"holds an ar2 query-tower distillation \(`ar2 distill-query`\)\. Fix: pass --resume"
    with pytest.raises(Ar2Error, match=held):
        run_distill(run, out, CFG)
    other = DistillConfig(layers=2, stage=CFG.stage, pseudo_queries=40)
    with pytest.raises(Ar2Error, match=r"--resume with other settings \(.*layers"):
        run_distill(run, out, other, resume=True)
    report = run_distill(run, out, CFG, resume=True)
    assert report["layers"] == 1
    stage = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert len(stage["losses"]) == 40  # 20 before the kill (checkpoint), 20 after
    with pytest.raises(Ar2Error, match="not a finished ar2 train run"):
        run_distill(tmp_path / "data", tmp_path / "x", CFG)


def test_a_run_whose_dev_split_is_a_dev_file(tmp_path: Path) -> None:
    """A collection with qrels/dev.tsv: the run's dev split is that file's queries."""
    run, data = tiny_train_run(tmp_path)
    lines = (data / "qrels" / "train.tsv").read_text().splitlines()
    dev = [line for line in lines[1:] if line.startswith(("t4q", "t7q"))]
    (data / "qrels" / "dev.tsv").write_text("\n".join([lines[0], *dev]) + "\n")
    (data / "qrels" / "train.tsv").write_text(
        "\n".join([lines[0], *(x for x in lines[1:] if x not in dev)]) + "\n"
    )
    ids = [line.split("\t")[0] for line in dev]
    (run / "dev_split.json").write_text(json.dumps({"source": "qrels/dev.tsv", "queries": ids}))
    cfg = DistillConfig(layers=1, pseudo_queries=10, stage=StageConfig(steps=3, batch_size=8))
    report = run_distill(run, tmp_path / "d", cfg)
    assert report["dev"]["queries"] == len(ids) == 6


def test_the_command_line(tmp_path: Path) -> None:
    from ar2.cli import main

    run, _ = tiny_train_run(tmp_path)
    args = ["distill-query", str(run), "--out", str(tmp_path / "d"), "--layers", "1",
            "--set", "stage.steps=5", "--set", "pseudo_queries=10"]  # fmt: skip
    assert main(args) == 0
    assert (
        json.loads((tmp_path / "d" / "distill.json").read_text())["config"]["stage"]["steps"] == 5
    )
    bad = ["distill-query", str(run), "--out", str(tmp_path / "e"), "--set", "stage.stpes=5"]
    assert main(bad) == 2
