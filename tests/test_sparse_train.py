"""``ar2 sparse`` on a tiny run: the step loss by hand, the FLOPS term at work, a run that
indexes and serves, resume after a kill, refusals and the command line."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("seismic")
pytest.importorskip("sentence_transformers")

from ar2 import losses  # noqa: E402
from ar2.config import SparseConfig, StageConfig  # noqa: E402
from ar2.data.training import TrainingGroup, write_groups  # noqa: E402
from ar2.encoders import sparse  # noqa: E402
from ar2.errors import Ar2Error  # noqa: E402
from ar2.train.sparse import run_sparse, step_loss  # noqa: E402
from conftest import (  # noqa: E402
    add_random_ranker,
    assert_per_query_is_the_report,
    check_tuned_teacher,
    killed_at,
    tiny_train_run,
)

CFG = SparseConfig(doc_max_length=32, flops_warmup=4, checkpoint_every=3,
                   stage=StageConfig(steps=6, batch_size=4, n_neg=2, lr=1e-3))  # fmt: skip


def _run(root: Path) -> Path:
    """A finished tiny run with G0 and round-0 groups (negatives: the corpus's other docs)."""
    from ar2.data.beir import load_corpus, load_qrels, load_queries

    run, data = tiny_train_run(root, filler_docs=20)
    shutil.copytree(run / "retriever", run / "g0" / "retriever")
    dev = set(json.loads((run / "dev_split.json").read_text())["queries"])
    qrels = load_qrels(data / "qrels" / "train.tsv")
    ids = [d.id for d in load_corpus(data / "corpus.jsonl")]
    queries = [q for q in load_queries(data / "queries.jsonl") if q.id in qrels and q.id not in dev]
    groups = [TrainingGroup(q, tuple(qrels[q.id]), tuple(d for d in ids if d not in qrels[q.id]))
              for q in queries]  # fmt: skip
    write_groups(run / "mined" / "round-0", groups, {"round": 0})
    return run


def test_the_step_loss_is_the_listwise_ce_of_idf_scores_plus_the_ramped_flops(
    tiny_bert: Path,
) -> None:
    from transformers import AutoTokenizer

    from ar2.types import Query

    docs = {"a": "cats eat fish", "b": "dogs chase balls", "c": "fish swim", "d": "cats"}
    idf = sparse.corpus_idf(AutoTokenizer.from_pretrained(str(tiny_bert)), list(docs.values()), 32)
    model = sparse.start(tiny_bert, idf, 32)
    model.eval()  # no dropout: the two passes agree
    groups = [TrainingGroup(Query("q", "what do cats eat"), ("a",), ("b", "c")),
              TrainingGroup(Query("r", "dogs"), ("b",), ("a", "d"))]  # fmt: skip
    cfg = SparseConfig(flops_weight=0.5, flops_warmup=4, precision="fp32",
                       stage=StageConfig(steps=4, batch_size=2, n_neg=2))  # fmt: skip
    got = step_loss(model, groups, docs, cfg, 1)
    # by hand: step 1's batch holds both groups (one epoch of two), each with its positive and
    # both negatives (n_neg = 2). The step draws their order from its seed, but listwise CE
    # with the positive first, its mean over queries and FLOPS do not depend on that order.
    q = sparse.query_weights(model, [g.query.text for g in groups])  # (2, V)
    texts = [docs[d] for g in groups for d in (*g.positives, *g.negatives)]
    w = sparse.document_weights(model, texts, precision="fp32")  # (6, V)
    scores = (w.view(2, 3, -1) * q[:, None, :]).sum(-1)  # (2, 3): idf-weighted dot products
    ramp = 0.5 * (2 / 4) ** 2  # flops_weight at step 2 of a 4-step quadratic ramp
    want = losses.listwise_ce(scores) + ramp * losses.flops(weights=w)
    assert got.item() == pytest.approx(want.item(), rel=1e-4)
    assert losses.flops(weights=w).item() > 0


def test_the_teacher_term_is_the_distillation_of_the_teachers_scores_of_the_drawn_documents(
    tiny_bert: Path,
) -> None:
    """kd_weight adds AR2's L_KD of the teacher's scores of each group's drawn documents (the
    positive first); with kd_weight 0 the teacher is never asked."""
    from transformers import AutoTokenizer

    from ar2.types import Query

    docs = {"a": "cats eat fish", "b": "dogs chase balls", "c": "fish swim", "d": "cats"}
    idf = sparse.corpus_idf(AutoTokenizer.from_pretrained(str(tiny_bert)), list(docs.values()), 32)
    model = sparse.start(tiny_bert, idf, 32)
    model.eval()
    groups = [TrainingGroup(Query("q", "what do cats eat"), ("a",), ("b", "c", "d")),
              TrainingGroup(Query("r", "dogs"), ("b",), ("a", "c", "d"))]  # fmt: skip
    asked = []
    points = {"a": 3.0, "b": 1.0, "c": -2.0, "d": 0.5}

    def judge(picks: list[int], ids: list[list[str]]) -> torch.Tensor:
        asked.append((list(picks), [list(r) for r in ids]))
        return torch.tensor([[points[d] for d in row] for row in ids])  # (B, M)

    stage = StageConfig(steps=4, batch_size=2, n_neg=2)
    plain = SparseConfig(flops_weight=0.5, flops_warmup=4, precision="fp32", stage=stage)
    taught = dataclasses.replace(plain, kd_weight=0.7)
    without = step_loss(model, groups, docs, plain, 1, judge)
    assert not asked
    got = step_loss(model, groups, docs, taught, 1, judge)
    [(picks, ids)] = asked
    assert sorted(picks) == [0, 1] and all(len(row) == 3 for row in ids)
    for pick, row in zip(picks, ids):  # the positive, then two of the group's negatives
        assert row[0] in groups[pick].positives and set(row[1:]) <= set(groups[pick].negatives)
    q = sparse.query_weights(model, [groups[i].query.text for i in picks])  # (2, V)
    w = sparse.document_weights(model, [docs[d] for row in ids for d in row], "fp32")  # (6, V)
    scores = (w.view(2, 3, -1) * q[:, None, :]).sum(-1)  # (2, 3)
    teacher = torch.tensor([[points[d] for d in row] for row in ids])  # (2, 3)
    target = torch.softmax(teacher, -1)  # Eqs. 11-12 by hand: CE to the teacher's softmax
    kd = -(target * torch.log_softmax(scores, -1)).sum(-1).mean()
    assert got.item() == pytest.approx(without.item() + 0.7 * kd.item(), rel=1e-4)
    assert kd.item() > 0.1


def test_a_run_with_a_tuned_teacher_distils_it(tmp_path: Path) -> None:
    run = _run(tmp_path)
    taught = dataclasses.replace(CFG, kd_weight=1.0)
    with pytest.raises(Ar2Error, match="no ranker/, which the teacher"):
        run_sparse(run, tmp_path / "t", taught)
    assert not (tmp_path / "t").exists()  # refused before anything is written
    add_random_ranker(run)
    manifest = (run / "index" / "manifest.json").read_text()
    (run / "index" / "manifest.json").write_text(manifest.replace('"ip"', '"l2"'))
    with pytest.raises(Ar2Error, match="an? l2 index; ar2 sparse's teacher .* inner products"):
        run_sparse(run, tmp_path / "t", taught)
    assert not (tmp_path / "t").exists()
    (run / "index" / "manifest.json").write_text(manifest)
    run_sparse(run, tmp_path / "t", taught)
    check_tuned_teacher(tmp_path / "t")
    run_sparse(run, tmp_path / "p", CFG)
    assert not (tmp_path / "p" / "teacher.json").exists()
    texts = ["cats w1 fish", "heart w25 risk"]
    assert not np.allclose(  # the teacher's term moved the encoder elsewhere
        sparse.encode_documents(sparse.load(tmp_path / "t" / "model"), texts).toarray(),
        sparse.encode_documents(sparse.load(tmp_path / "p" / "model"), texts).toarray(),
        atol=1e-5,
    )


def test_the_flops_term_makes_the_index_sparser(tmp_path: Path) -> None:
    run = _run(tmp_path)
    plain = run_sparse(run, tmp_path / "plain", dataclasses.replace(CFG, flops_weight=0.0))
    pushed = run_sparse(run, tmp_path / "pushed", dataclasses.replace(CFG, flops_weight=50.0))
    n_plain = plain["index"]["document_weights"]["nonzero"]
    n_pushed = pushed["index"]["document_weights"]["nonzero"]
    assert n_pushed < n_plain


def test_a_run_indexes_serves_and_resumes_after_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ar2.cli import main
    from ar2.serve import SearchService
    from ar2.types import Query

    run = _run(tmp_path)
    out = tmp_path / "a"
    monkeypatch.setattr(losses, "flops", killed_at(4, losses.flops))
    with pytest.raises(KeyboardInterrupt):
        run_sparse(run, out, CFG)
    monkeypatch.undo()
    assert (out / "checkpoints" / "sparse").is_dir() and not (out / "model").exists()
    with pytest.raises(Ar2Error, match="inference-free sparse retriever"):
        run_sparse(run, out, CFG)  # no --resume
    other = SparseConfig(doc_max_length=32, flops_warmup=5, checkpoint_every=3, stage=CFG.stage)
    with pytest.raises(Ar2Error, match=r"--resume with other settings \(flops_warmup"):
        run_sparse(run, out, other, resume=True)
    report = run_sparse(run, out, CFG, resume=True)
    stage = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    record = json.loads((out / "sparse.json").read_text())
    for added in ("kd_weight", "teacher"):  # an output made before these settings existed
        del record["config"][added]
    (out / "sparse.json").write_text(json.dumps(record))
    assert run_sparse(run, out, CFG, resume=True) == report  # resumes with their defaults
    other_teacher = dataclasses.replace(CFG.teacher, scale=5.0)
    with pytest.raises(Ar2Error, match=r"--resume with other settings \(teacher"):
        run_sparse(run, out, dataclasses.replace(CFG, teacher=other_teacher), resume=True)
    assert len(stage["losses"]) == 6  # 3 before the kill (checkpoint), 3 after
    straight = run_sparse(run, tmp_path / "b", CFG)
    texts = ["cats w1 fish", "heart w25 risk"]
    np.testing.assert_allclose(  # the resumed run ends where an uninterrupted one does
        sparse.encode_documents(sparse.load(out / "model"), texts).toarray(),
        sparse.encode_documents(sparse.load(tmp_path / "b" / "model"), texts).toarray(),
        atol=1e-4,
    )
    assert report["dev"]["nDCG@10"] == pytest.approx(straight["dev"]["nDCG@10"], abs=1e-3)
    assert set(report["test"]["nDCG@10"]) == {"sparse", "dense", "bm25"}
    assert_per_query_is_the_report(out, report)
    service = SearchService.load(out / "index")
    assert service.modes[0] == "sparse"
    assert service.search([Query("q", "cats")], 3)["q"]
    capsys.readouterr()
    assert main(["sparse", str(run), "--out", str(tmp_path / "c"), "--set", "stage.steps=2"]) == 0
    assert "sparse - dense" in capsys.readouterr().out
    assert main(["sparse", str(run), "--out", str(tmp_path / "d"), "--set", "start=bert"]) == 2
    assert "start" in capsys.readouterr().err
    shutil.rmtree(run / "mined")
    with pytest.raises(Ar2Error, match="no mined/round-0/groups.jsonl"):
        run_sparse(run, tmp_path / "e", CFG)
