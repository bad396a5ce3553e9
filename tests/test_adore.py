"""``ar2 adore`` on a tiny run: negatives searched at every step with the query tower as it
then stands, training that moves the query tower and nothing else, an index that serves with
it, resume and refusals, and the command line."""

from __future__ import annotations

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
from conftest import killed_at, tiny_train_run, train_mrr  # noqa: E402

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
