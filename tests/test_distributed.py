"""Data parallelism on CPU (gloo, 2 processes under torchrun, a tiny model): one training step
of every loss equals the single-process step on the same global batch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from ar2 import distributed
from ar2.errors import Ar2Error

HERE = Path(__file__).parent


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node nproc ARGS`` (a free port, loopback only)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(nproc), *args]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE), "AR2_PRECISION": "fp32"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def models(_tiny_bert_master: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A retriever and a ranker whose scores differ from document to document (a fresh tiny
    BERT scores every pair alike, and its gradients are then round-off)."""
    import torch

    from ar2.encoders import BiEncoder, CrossEncoder

    folder = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    retriever = BiEncoder.load(_tiny_bert_master, precision="fp32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a new head: random on purpose, saved so both agree
        ranker = CrossEncoder.load(_tiny_bert_master, precision="fp32")
    with torch.no_grad():
        for module in (retriever.doc_model, ranker.model):
            for param in module.parameters():
                param.add_(torch.randn_like(param) * 0.5)
    retriever.save(folder / "retriever")
    ranker.save(folder / "ranker")
    return str(folder / "retriever"), str(folder / "ranker")


def test_shards_split_a_batch_evenly_or_say_why() -> None:
    w = distributed.World(rank=1, size=3)
    assert distributed.shard(list(range(6)), w) == [2, 3]
    with pytest.raises(Ar2Error, match="multiple of the number of processes"):
        distributed.shard(list(range(7)), w)


def _two_nodes(*args: str, logs: Path, timeout: int = 300) -> list[tuple[int, str]]:
    """The multi-node launch: two torchrun agents of one process each (``--nnodes 2``), meeting
    at a c10d rendezvous on this machine, as two machines would at HOST0's address. Returns
    each agent's exit code and output (written to files: a full pipe would block it)."""
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE), "AR2_PRECISION": "fp32"}
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank"]
        cmd += [str(node), "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_id", "t"]
        cmd += ["--rdzv_endpoint", f"127.0.0.1:{port}", "--local_addr", "127.0.0.1", *args]
        with open(logs / f"node{node}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    try:
        codes = [proc.wait(timeout=max(1.0, deadline - time.monotonic())) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    return [(code, (logs / f"node{n}.log").read_text()) for n, code in enumerate(codes)]


def test_the_patient_timeout_is_long_by_default_and_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed._timeout().total_seconds() == 6 * 3600
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "90")
    assert distributed._timeout().total_seconds() == 90 * 60
    for bad in ("soon", "0", "nan", "inf", "-5"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(Ar2Error, match="AR2_DIST_TIMEOUT_MIN.*expected minutes > 0"):
            distributed._timeout()


@pytest.mark.integration
@pytest.mark.parametrize("launch", ["one node", "two nodes"])
def test_one_step_of_every_loss_equals_the_single_process_step(
    models: tuple[str, str], tmp_path: Path, launch: str
) -> None:
    import torch
    from safetensors.torch import load_file

    from dist_step import KINDS, step_results

    args = (str(HERE / "dist_step.py"), *models, str(tmp_path))
    if launch == "one node":
        done = torchrun(*args)
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        for code, output in _two_nodes(*args, logs=tmp_path):
            assert code == 0, output[-3000:]
    torch.set_num_threads(1)
    reference = step_results(*models)
    for kind in KINDS:
        ref_loss, ref_grads = reference[kind]
        for rank in (0, 1):
            loss = json.loads((tmp_path / f"{kind}-rank{rank}.json").read_text())["loss"]
            grads = load_file(str(tmp_path / f"{kind}-rank{rank}.safetensors"))
            assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6), kind
            assert set(grads) == set(ref_grads), kind
            scale = max(g.abs().max().item() for g in ref_grads.values())
            assert scale > 0, kind  # a step that trains something
            for name, grad in grads.items():  # summation order differs: float32 round-off
                torch.testing.assert_close(
                    grad, ref_grads[name], rtol=1e-4, atol=1e-5 * scale, msg=f"{kind} {name}"
                )


def _train(
    data: Path, bert: Path, out: Path, nproc: int, *extra: str
) -> subprocess.CompletedProcess[str]:
    args = ["-m", "ar2.cli", "-q", "train", str(data), "--preset", "toy"]
    args += ["--model", str(bert), "--out", str(out), *extra]
    if nproc == 1:
        env = os.environ | {"OMP_NUM_THREADS": "1", "AR2_PRECISION": "fp32"}
        cmd = [sys.executable, *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    return torchrun(*args, nproc=nproc, timeout=600)


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The toy preset trained by 1 process and by 2 (fp32, a tiny BERT without dropout: masks
    would differ per shard), plus the data and model they used."""
    from conftest import build_tiny_bert, write_train_toy

    root = tmp_path_factory.mktemp("toy_runs")
    runs = {"bert": build_tiny_bert(root / "bert", dropout=0.0)}
    runs["data"] = write_train_toy(root / "data")
    for name, nproc in (("one", 1), ("two", 2)):
        runs[name] = root / name
        done = _train(runs["data"], runs["bert"], runs[name], nproc)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
    return runs


def _groups(run: Path, name: str) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    from ar2.data.training import read_groups

    return [(g.query.id, g.positives, g.negatives) for g in read_groups(run / "mined" / name)]


@pytest.mark.integration
def test_a_two_process_ar2_run_mines_and_scores_like_one_process(
    toy_runs: dict[str, Path],
) -> None:
    """The toy preset (G0, D0, two AR2 rounds with index refreshes) under torchrun with 2
    processes against 1 process: the same mined negatives every round, the same losses and
    retriever metrics.

    The ranker's metrics (D, G+D) are not compared: the toy ranker barely moves from its new
    head (loss ln 3 = 1.0986), its scores for a query's documents agree to about 1e-5, and
    their order is round-off. Its training loss, which is compared, matches.
    """
    one, two = toy_runs["one"], toy_runs["two"]
    mined = sorted(p.name for p in (two / "mined").iterdir())
    assert mined == ["bm25", "round-0", "round-1", "round-2"]
    for name in mined:
        assert _groups(two, name) == _groups(one, name), name
    records = [
        [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        for out in (one, two)
    ]
    assert [r["stage"] for r in records[1]] == [r["stage"] for r in records[0]]
    for a, b in zip(*records):
        if "loss" in a:
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), a["stage"]
        if a["stage"].startswith("dev-g-"):
            assert b["dev"] == pytest.approx(a["dev"], abs=1e-6), a["stage"]
    report = [json.loads((out / "report.json").read_text()) for out in (one, two)]
    for system in ("bm25", "start", "g0", "ar2-g"):
        assert report[1][system] == pytest.approx(report[0][system], abs=1e-6), system


@pytest.mark.integration
@pytest.mark.parametrize("resume_nproc", [2, 1])
def test_a_killed_two_process_run_resumes_to_the_same_result(
    toy_runs: dict[str, Path], tmp_path: Path, resume_nproc: int
) -> None:
    """Both processes (and torchrun) killed at once when round 1's first checkpoint appears,
    then ``--resume`` under 2 processes, or 1 (batches, checkpoints and negatives are global):
    the same negatives, models and report as the uninterrupted 2-process run."""
    from safetensors.numpy import load_file

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "ar2.cli", "-q", "train", str(toy_runs["data"]), "--preset", "toy"]
    cmd += ["--model", str(toy_runs["bert"]), "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE), "AR2_PRECISION": "fp32"}
    log = tmp_path / "killed.log"
    with open(log, "w") as f:  # a file, not a pipe: nobody reads while it runs
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=f, stderr=f)
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoints" / "ar2").is_dir():  # round 1's first checkpoint
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # every process of the job, as a lost node would
        proc.wait()
    assert not (out / "report.json").exists()
    resumed = _train(toy_runs["data"], toy_runs["bert"], out, resume_nproc, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    two = toy_runs["two"]
    for name in ("round-0", "round-1", "round-2"):
        assert _groups(out, name) == _groups(two, name), name
    for name in ("retriever/model.safetensors", "ranker/model.safetensors"):
        want, got = load_file(str(two / name)), load_file(str(out / name))
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=f"{name}:{key}")
    got, want = (json.loads((p / "report.json").read_text()) for p in (out, two))
    for system in ("bm25", "start", "g0", "ar2-g"):
        assert got[system] == pytest.approx(want[system], abs=1e-6), system
