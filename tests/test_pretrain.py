"""`ar2 pretrain` (issue 14): pairs from the corpus alone, no qrels read, resumable, and its
models as `ar2 train`'s start."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ar2.cli import main
from ar2.config import TeacherConfig
from ar2.data.pseudo import crop, crop_pair, ict_pair, pseudo_pair, sentences
from ar2.types import Doc

TOPICS = ["cats", "dogs", "birds", "fish", "trees", "rocks", "stars", "ships", "roads", "songs"]


def _corpus(root: Path, broken_labels: bool = True) -> Path:
    """A corpus of 40 three-sentence documents; with ``broken_labels``, queries and qrels
    files that fail to parse, so that a command reading them would stop."""
    root.mkdir(parents=True, exist_ok=True)
    docs = []
    for t, topic in enumerate(TOPICS):
        for j in range(4):
            text = (f"The {topic} w{t}{j} live here. Many {topic} like w{t}{j} food. "
                    f"Other {topic} avoid it.")  # fmt: skip
            docs.append({"_id": f"{topic}{j}", "title": topic.title(), "text": text})
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    if broken_labels:
        (root / "queries.jsonl").write_text("this is not json\n")
        (root / "qrels").mkdir(exist_ok=True)
        (root / "qrels" / "train.tsv").write_text("not\ta\tqrels\tfile\twith\tcolumns\n")
    return root


def _cmd(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    settings = ["retriever.steps=4", "retriever.batch_size=4", "ranker.steps=3",
                "ranker.batch_size=2", "ranker.n_neg=2", "check_queries=5", "check_docs=20",
                "checkpoint_every=1", "query_max_length=16", "doc_max_length=24",
                "ranker_max_length=40"]  # fmt: skip
    sets = [x for s in settings for x in ("--set", s)]
    return [sys.executable, "-m", "ar2.cli", "-q", "pretrain", str(data), "--out", str(out),
            "--model", str(model), *sets, *extra]  # fmt: skip


# --- the pairs -------------------------------------------------------------------------


def test_an_ict_pair_takes_one_sentence_out_of_its_document() -> None:
    doc = Doc("d", "Alpha one. Beta two. Gamma three.", "T")
    rng = random.Random(3)
    query, positive = ict_pair(doc, rng, keep=0.0)
    assert query.text in sentences(doc.text)
    assert sentences(positive.text) == [s for s in sentences(doc.text) if s != query.text]
    assert positive.title == "T" and positive.id == "d"


def test_the_ict_sentence_stays_in_at_the_keep_rate() -> None:
    doc = Doc("d", "Alpha one. Beta two. Gamma three.")
    rng = random.Random(0)
    kept = sum(ict_pair(doc, rng, keep=0.1)[1].text == doc.text for _ in range(4000))
    assert 0.08 < kept / 4000 < 0.12


def test_crops_are_spans_of_the_documents_words_with_deletion() -> None:
    words = [f"w{i}" for i in range(100)]
    rng = random.Random(1)
    lengths = []
    for _ in range(300):
        span = crop(words, rng, 0.1, 0.5, 0.0).split()
        start = words.index(span[0])
        assert span == words[start : start + len(span)]  # contiguous
        lengths.append(len(span))
    assert min(lengths) >= 10 and max(lengths) <= 50
    deleted = [100 - len(crop(words, rng, 1.0, 1.0, 0.1).split()) for _ in range(300)]
    assert 8 < np.mean(deleted) < 12
    query, positive = crop_pair(Doc("d", " ".join(words), "Title"), rng)
    assert query.id == "crop:d" and positive.id == "d"


def test_the_task_mix_follows_the_ict_fraction() -> None:
    doc = Doc("d", "Alpha one. Beta two.")
    rng = random.Random(2)
    ict = sum(pseudo_pair(doc, rng, 0.3)[0].id.startswith("ict:") for _ in range(3000))
    assert 0.27 < ict / 3000 < 0.33


# --- the command -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    pytest.importorskip("torch")
    from conftest import build_tiny_bert

    root = tmp_path_factory.mktemp("pretrain")
    data, model, out = _corpus(root / "data"), build_tiny_bert(root / "tiny"), root / "run"
    done = subprocess.run(_cmd(data, model, out), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return data, model, out


def test_pretrain_reads_the_corpus_alone_and_writes_its_models_and_report(
    pretrained: tuple[Path, Path, Path],
) -> None:
    from ar2.encoders import BiEncoder, CrossEncoder

    data, _, out = pretrained  # queries.jsonl and qrels/train.tsv there do not parse
    record = json.loads((out / "pretrain.json").read_text())
    assert list(record["data"]["files"]) == ["corpus.jsonl"]
    BiEncoder.load(out / "retriever"), CrossEncoder.load(out / "ranker")
    stages = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(s["stage"], s["steps"]) for s in stages] == [
        ("pretrain-retriever", 4), ("pretrain-ranker", 3)
    ]  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert list(report) == ["start", "pretrained", "pretrained+ranker", "bm25"]
    assert set(report["pretrained"]) == {"RR@10", "R@1", "R@10"}
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["queries_judged"] == 5 and protocol["corpus_size"] == 20
    assert (out / "training.png").is_file() and (out / "stage_tests.json").is_file()


def test_both_models_trained(pretrained: tuple[Path, Path, Path]) -> None:
    from safetensors.numpy import load_file

    _, model, out = pretrained
    start = load_file(str(model / "model.safetensors"))
    for role in ("retriever", "ranker"):
        saved = load_file(str(out / role / "model.safetensors"))
        weights = {k.removeprefix("bert."): v for k, v in saved.items()}  # the ranker's prefix
        shared = [k for k in start if k in weights]
        assert shared and any(not np.allclose(start[k], weights[k]) for k in shared), role
        curve = next(json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
                     if json.loads(x)["stage"] == f"pretrain-{role}")  # fmt: skip
        assert all(np.isfinite(curve["losses"]))


def test_a_second_pretrain_needs_resume_and_the_same_settings_and_corpus(
    pretrained: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, model, out = pretrained
    before = (out / "retriever" / "model.safetensors").read_bytes()
    argv = _cmd(data, model, out)[3:]
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0  # everything done: nothing retrained
    assert (out / "retriever" / "model.safetensors").read_bytes() == before
    assert main([*argv, "--resume", "--set", "ict_fraction=0.9"]) == 2
    assert "ict_fraction" in capsys.readouterr().err
    other = _corpus(out.parent / "other", broken_labels=False)
    (other / "corpus.jsonl").write_text((data / "corpus.jsonl").read_text().replace("w00", "z"))
    assert main([*_cmd(other, model, out)[3:], "--resume"]) == 2
    assert "another corpus" in capsys.readouterr().err


@pytest.mark.integration
def test_a_killed_pretrain_resumes_to_the_same_models(
    pretrained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from safetensors.numpy import load_file

    from test_train import _kill_when

    data, model, reference = pretrained
    out = tmp_path / "killed"
    _kill_when(_cmd(data, model, out), out / "checkpoints" / "pretrain-ranker")
    resumed = subprocess.run(_cmd(data, model, out, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("retriever/model.safetensors", "ranker/model.safetensors"):
        want, got = load_file(str(reference / name)), load_file(str(out / name))
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=f"{name}:{key}")


def test_train_takes_a_pretrain_run_as_its_start(pretrained: tuple[Path, Path, Path]) -> None:
    from ar2.cli import _start_models
    from ar2.encoders import BiEncoder
    from ar2.errors import Ar2Error

    _, _, out = pretrained
    with pytest.raises(Ar2Error, match="retriever"):  # elsewhere the message names the fix
        BiEncoder.load(out)
    assert _start_models(out) == {
        "retriever_model": str(out / "retriever"),
        "ranker_model": str(out / "ranker"),
        "ranker_from_g0": False,
    }


def test_bad_pretrain_settings_fail_in_one_line(tmp_path: Path) -> None:
    data = _corpus(tmp_path / "data")
    for bad in ("crop_min=0.6", "ict_fraction=2", "retriever.stpes=3"):
        result = subprocess.run(
            [sys.executable, "-m", "ar2.cli", "pretrain", str(data), "--out",
             str(tmp_path / "o"), "--set", bad], capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 2 and "Traceback" not in result.stderr, bad
    assert not (tmp_path / "o").exists()
    cmd = [sys.executable, "-m", "ar2.cli", "pretrain", str(tmp_path), "--out", str(tmp_path / "o")]
    missing = subprocess.run(cmd, capture_output=True, text=True)
    assert missing.returncode == 2 and "corpus.jsonl" in missing.stderr


def test_pseudo_batches_are_seeded_and_their_negatives_are_bm25_neighbours(
    tmp_path: Path,
) -> None:
    from ar2.config import PretrainConfig
    from ar2.data.beir import load_corpus
    from ar2.index import BM25Index
    from ar2.train.pretrain import PseudoBatches

    corpus = load_corpus(_corpus(tmp_path / "data") / "corpus.jsonl")
    batches = PseudoBatches(corpus, corpus, PretrainConfig(negatives_k=5))
    bm25 = BM25Index.build(corpus)
    batch = batches.batch("s", 0, 4, 2)
    assert batch.group_size == 3 and len(batch.queries) == 4
    for i, query in enumerate(batch.queries):
        positive, *negatives = batch.docs[3 * i : 3 * i + 3]
        assert query.id.endswith(positive.id) and positive.id not in {d.id for d in negatives}
        top = [h.doc_id for h in bm25.search([query.text], 6)[0] if h.doc_id != positive.id]
        assert {d.id for d in negatives} <= set(top[:5])  # from BM25's top 5, source left out
    again = batches.batch("s", 0, 4, 2)
    assert again == batch and batches.batch("s", 1, 4, 2) != batch
    assert batches.batch("s", 0, 4, 0).group_size == 1  # in-batch negatives only


# --- the label-free teacher (kd_weight) ----------------------------------------------------


def test_kd_weight_needs_bm25_negatives_and_fails_in_one_line(tmp_path: Path) -> None:
    from ar2.config import PretrainConfig, StageConfig

    with pytest.raises(ValueError, match="retriever.n_neg >= 1"):
        PretrainConfig(kd_weight=1.0)
    with pytest.raises(ValueError, match="set kd_weight > 0"):
        PretrainConfig(pair_weight=0.0)
    with pytest.raises(ValueError, match="set kd_weight > 0"):
        PretrainConfig(teacher_bm25=0.9)
    PretrainConfig(kd_weight=1.0, retriever=StageConfig(steps=2, batch_size=2, n_neg=1))
    result = subprocess.run(
        [sys.executable, "-m", "ar2.cli", "pretrain", str(_corpus(tmp_path / "data")), "--out",
         str(tmp_path / "o"), "--set", "kd_weight=1"], capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "retriever.n_neg" in result.stderr and not (tmp_path / "o").exists()


def _minmax(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min())


@pytest.fixture(scope="module")
def teacher_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any]:
    from ar2.config import PretrainConfig, StageConfig
    from ar2.data.beir import load_corpus
    from ar2.train.pretrain import PseudoBatches
    from conftest import build_tiny_bert

    root = tmp_path_factory.mktemp("kd")
    corpus = load_corpus(_corpus(root / "data") / "corpus.jsonl")
    stage = StageConfig(steps=2, batch_size=3, n_neg=2, lr=1e-4)
    cfg = PretrainConfig(model=str(build_tiny_bert(root / "tiny")), kd_weight=0.7,
                         teacher_bm25=0.4, retriever=stage, negatives_k=5,
                         query_max_length=16, doc_max_length=9)  # fmt: skip
    batches = PseudoBatches(corpus, corpus, cfg)
    return cfg, batches, batches.batch("kd", 0, 3, 2)


def test_the_label_free_teacher_mixes_the_start_model_and_bm25_by_hand(
    teacher_setup: tuple[Any, Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ar2.encoders import BiEncoder
    from ar2.train.pretrain import label_free_teacher

    monkeypatch.setenv("AR2_PRECISION", "fp32")  # both sides in fp32 on any CPU
    cfg, batches, batch = teacher_setup
    teacher = label_free_teacher(batches, cfg)
    assert teacher.ranker is None  # no ranker is loaded or run
    got = teacher.batch_scores(batch, cfg).numpy()  # (3, 3)
    start = BiEncoder.load(cfg.model, query_max_length=16, doc_max_length=9)  # the training cut
    whole = BiEncoder.load(cfg.model).encode_docs(batch.docs)
    assert not np.allclose(start.encode_docs(batch.docs), whole)  # 9 tokens cut some of them
    q, d = start.encode_queries(batch.queries), start.encode_docs(batch.docs)
    m = batch.group_size
    for b, query in enumerate(batch.queries):
        dense = d[b * m : (b + 1) * m] @ q[b]
        lexical = batches.bm25().score(query.text, [x.id for x in batch.docs[b * m : (b + 1) * m]])
        by_hand = 10.0 * (0.6 * _minmax(dense) + 0.4 * _minmax(lexical))  # TeacherConfig.scale
        np.testing.assert_allclose(got[b], by_hand, atol=1e-4)


def test_a_teacher_without_a_ranker_that_would_need_one_is_refused() -> None:
    from ar2.errors import Ar2Error
    from ar2.train.teacher import Teacher

    with pytest.raises(Ar2Error, match="Fix:"):
        Teacher(None, TeacherConfig())  # AR2's teacher is the ranker
    with pytest.raises(Ar2Error, match="Fix:"):
        Teacher(None, TeacherConfig(), {"ranker": 0.2, "retriever": 0.8, "bm25": 0.0})


def test_the_distilled_loss_is_the_in_batch_nll_plus_the_weighted_kd_by_hand(
    teacher_setup: tuple[Any, Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from ar2.encoders import BiEncoder
    from ar2.train.pretrain import distilled_loss

    monkeypatch.setenv("AR2_PRECISION", "fp32")
    cfg, _, batch = teacher_setup
    encoder = BiEncoder.load(cfg.model, query_max_length=16)
    target = torch.tensor([[3.0, 1.0, 0.0], [0.5, 2.0, 1.0], [0.0, 0.0, 4.0]])

    class Fixed:
        def batch_scores(self, batch: Any, run_cfg: Any) -> Any:
            return target

    got = float(distilled_loss(encoder, Fixed(), batch, cfg).detach())  # type: ignore[arg-type]
    cut = BiEncoder.load(cfg.model, query_max_length=16, doc_max_length=9)  # the training cut
    q = cut.encode_queries(batch.queries).astype(np.float64)
    d = cut.encode_docs(batch.docs).astype(np.float64)
    s = cfg.scale * q @ d.T  # (3, 9): every passage of the batch
    nll = np.mean([np.log(np.exp(s[b]).sum()) - s[b, 3 * b] for b in range(3)])
    kd = 0.0
    for b in range(3):
        group = s[b, 3 * b : 3 * b + 3]
        p_teacher = np.exp(target[b].numpy()) / np.exp(target[b].numpy()).sum()
        kd -= (p_teacher * (group - np.log(np.exp(group).sum()))).sum() / 3
    assert got == pytest.approx(nll + 0.7 * kd, rel=2e-3)
    for pair_weight in (0.5, 0.0):  # 0: the teacher alone, no NLL term
        weighed = dataclasses.replace(cfg, pair_weight=pair_weight)
        got = float(distilled_loss(encoder, Fixed(), batch, weighed).detach())  # type: ignore[arg-type]
        assert got == pytest.approx(pair_weight * nll + 0.7 * kd, rel=2e-3)


def test_a_pretrain_with_kd_weight_scores_every_step_with_the_teacher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ar2.config import PretrainConfig, StageConfig
    from ar2.train import pretrain
    from conftest import build_tiny_bert

    calls = []
    original = pretrain.distilled_loss

    def spy(*args: Any) -> Any:
        calls.append(args[1].weights)
        return original(*args)

    monkeypatch.setattr(pretrain, "distilled_loss", spy)
    cfg = PretrainConfig(model=str(build_tiny_bert(tmp_path / "tiny")), kd_weight=1.0,
                         retriever=StageConfig(steps=3, batch_size=4, n_neg=1, lr=1e-4),
                         ranker=StageConfig(steps=0, batch_size=2, n_neg=1, lr=1e-4),
                         check_queries=3, check_docs=10, query_max_length=16,
                         doc_max_length=24, ranker_max_length=40)  # fmt: skip
    pretrain.run_pretrain(_corpus(tmp_path / "data"), tmp_path / "run", cfg)
    assert calls == [{"ranker": 0.0, "retriever": 0.5, "bm25": 0.5}] * 3
    record = json.loads((tmp_path / "run" / "pretrain.json").read_text())
    assert record["config"]["kd_weight"] == 1.0


def test_a_run_saved_before_the_teacher_settings_resumes_with_their_defaults(
    pretrained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    import shutil

    from ar2._outdir import LOCK_NAME

    data, model, out = pretrained
    older = tmp_path / "older"
    shutil.copytree(out, older, ignore=shutil.ignore_patterns(LOCK_NAME))
    record = json.loads((older / "pretrain.json").read_text())
    for key in ("kd_weight", "teacher_bm25", "pair_weight"):  # what a run of before wrote
        del record["config"][key]
    (older / "pretrain.json").write_text(json.dumps(record))
    argv = _cmd(data, model, older)[3:]
    assert main([*argv, "--resume"]) == 0
    assert main([*argv, "--resume", "--set", "kd_weight=1", "--set", "retriever.n_neg=1"]) == 2
