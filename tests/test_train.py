"""AR2 training end to end on toy data with a tiny model: artifacts, determinism, kill + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ar2.cli import main
from conftest import write_train_toy

pytest.importorskip("torch")


def _train_cmd(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ar2.cli", "-q", "train", str(data), "--preset", "toy",
            "--model", str(model), "--out", str(out), *extra]  # fmt: skip


TOY_PRESET = Path(__file__).parents[1] / "src" / "ar2" / "presets" / "toy.toml"


def _toy_toml(folder: Path, old: str, new: str) -> Path:
    """The toy preset with ``old`` replaced by ``new``, written to ``folder/variant.toml``."""
    text = TOY_PRESET.read_text()
    assert old in text, old
    config = folder / "variant.toml"
    config.write_text(text.replace(old, new))
    return config


def _toy_config(model: Path, **changes: Any) -> Any:
    """The toy preset as an AR2Config for ``model``, with ``changes``."""
    from ar2.config import load_ar2_config, load_toml

    raw = load_toml(TOY_PRESET) | {"retriever_model": str(model), "ranker_model": str(model)}
    return load_ar2_config(raw | changes, "toy variant")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from conftest import build_tiny_bert

    root = tmp_path_factory.mktemp("train")
    data = write_train_toy(root / "data")
    model = build_tiny_bert(root / "tiny")
    out = root / "run"
    result = subprocess.run(_train_cmd(data, model, out), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (root / "stderr.txt").write_text(result.stderr)
    return data, model, out


def test_the_ranker_head_the_run_trains_is_not_a_warning(toy_run: tuple[Path, Path, Path]) -> None:
    data, model, out = toy_run
    from ar2.encoders import CrossEncoder

    with pytest.warns(UserWarning, match="no one-label classification head"):
        CrossEncoder.load(out / "g0" / "retriever")  # outside a run, the warning stands
    stderr = (out.parent / "stderr.txt").read_text()
    assert "d0:" in stderr and "no one-label classification head" not in stderr


def test_the_estimate_plans_every_stage_the_run_ran(toy_run: tuple[Path, Path, Path]) -> None:
    from types import SimpleNamespace

    from ar2.config import load_ar2_config
    from ar2.train.estimate import Lengths, plan
    from ar2.train.run_config import for_collection

    data, _, out = toy_run
    config = json.loads((out / "config.json").read_text())
    config.pop("data")
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    training = json.loads((out / "protocol.json").read_text())["systems"]["training"]
    n_train = training["training_queries"]
    assert set(training["seconds"]) == {r["stage"] for r in records}  # every stage timed
    cfg, _ = for_collection(load_ar2_config(config), n_train)
    counts = SimpleNamespace(corpus=[0] * 10, train=[0] * n_train, dev=[0] * 3, test=[0] * 3)
    work = plan(cfg, counts, Lengths(query=5, doc_train=20, doc_index=30))
    assert list(work) == [r["stage"] for r in records] + ["final"]
    trained = {r["stage"]: r["steps"] for r in records if "steps" in r}
    assert all(work[stage].train > 0 for stage in trained)


def test_run_writes_every_artifact(toy_run: tuple[Path, Path, Path]) -> None:
    from sentence_transformers import CrossEncoder as STCrossEncoder
    from sentence_transformers import SentenceTransformer

    data, _, out = toy_run
    for name in ("retriever", "ranker", "index", "g0/retriever", "d0/ranker", "rounds/2/ranker"):
        assert (out / name).is_dir(), name
    for name in ("report.md", "report.png", "training.png", "metrics.jsonl", "dev_split.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert list(report) == ["bm25", "start", "g0", "ar2-g", "ar2-g+d", "ar2-d"]
    stages = [json.loads(x)["stage"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert stages == [
        "g0-train", "dev-g-0", "d0-train", "dev-gd-0",
        "round-1-ranker", "round-1-retriever", "dev-g-1", "dev-gd-1",
        "round-2-ranker", "round-2-retriever", "dev-g-2", "dev-gd-2",
    ]  # fmt: skip
    SentenceTransformer(str(out / "retriever"), device="cpu").encode(["cats w0"])
    STCrossEncoder(str(out / "ranker"), device="cpu").predict([("cats", "cats w0")])
    dev = json.loads((out / "dev_split.json").read_text())
    assert len(dev["queries"]) == 4 and "hold-out" in dev["source"]


def test_the_ranker_alone_row_reuses_the_fused_reranks_scores(tiny_bert: Path) -> None:
    from ar2.encoders import CrossEncoder
    from ar2.train.report import _AlsoAlone
    from ar2.types import Doc, Hit, Query

    docs = {f"d{i}": Doc(f"d{i}", text) for i, text in enumerate(
        ["cats eat fish", "dogs chase balls", "a", "cats and dogs", "fish"])}  # fmt: skip
    model = CrossEncoder.load(tiny_bert, precision="fp32", head="cosine", fusion_weight=0.0)
    ranker = _AlsoAlone(model, docs)
    hits = [Hit(d, 10.0 - i) for i, d in enumerate(docs)]
    fused = ranker.rerank(Query("q1", "what do cats eat"), hits)
    assert [h.doc_id for h in fused] == list(docs)  # w = 0: the retrieval order
    scores = model.score("what do cats eat", list(docs.values()))
    by_ranker = [list(docs)[i] for i in np.argsort(-scores, kind="stable")]
    assert [h.doc_id for h in ranker.alone["q1"]] == by_ranker != list(docs)


def test_fusion_weight_is_tuned_on_dev_and_saved_with_the_ranker(
    toy_run: tuple[Path, Path, Path],
) -> None:
    from ar2.encoders import CrossEncoder

    _, _, out = toy_run
    tuned = json.loads((out / "dev_runs" / "round-2.fusion.json").read_text())
    values = tuned["nDCG@10"]
    assert len(values) == 11 and values[str(tuned["weight"])] == max(values.values())
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["stage"] == "dev-gd-2"][0]
    assert last["dev"] == {"G+D": max(values.values()), "D": values["1.0"]}
    ranker = CrossEncoder.load(out / "ranker")
    assert ranker.config.fusion_weight == tuned["weight"]
    assert ranker.config.max_length == 40  # the toy preset's ranker_max_length


def test_mined_groups_exclude_positives_and_record_provenance(
    toy_run: tuple[Path, Path, Path],
) -> None:
    from ar2.data.beir import load_qrels
    from ar2.data.training import read_groups

    data, _, out = toy_run
    qrels = load_qrels(data / "qrels" / "train.tsv")
    dev = set(json.loads((out / "dev_split.json").read_text())["queries"])
    for r in (0, 1, 2):
        folder = out / "mined" / f"round-{r}"
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["round"] == r and manifest["k"] == 8 and manifest["checkpoint"]
        for group in read_groups(folder):
            assert group.query.id not in dev  # dev queries are never trained on
            assert not set(group.negatives) & set(qrels[group.query.id])


def test_existing_run_needs_resume_and_the_same_config(
    toy_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, model, out = toy_run
    again = subprocess.run(_train_cmd(data, model, out), capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr
    config = _toy_toml(tmp_path, "rounds = 2", "rounds = 3")
    cmd = _train_cmd(data, model, out, "--resume", "--config", str(config))  # --config wins
    changed = subprocess.run(cmd, capture_output=True, text=True)
    assert changed.returncode == 2 and "different config" in changed.stderr


def _kill_when(cmd: list[str], ready: Path, timeout: float = 120) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.integration
@pytest.mark.parametrize("kill_point", ["checkpoints/g0", "checkpoints/ar2", "rounds/1/ranker"])
def test_kill_and_resume_matches_the_uninterrupted_run(
    toy_run: tuple[Path, Path, Path], tmp_path: Path, kill_point: str
) -> None:
    from safetensors.numpy import load_file

    data, model, reference = toy_run
    out = tmp_path / "killed"
    _kill_when(_train_cmd(data, model, out), out / kill_point)
    assert not (out / "report.json").exists()
    resumed = subprocess.run(
        _train_cmd(data, model, out, "--resume"), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    for name in ("retriever/model.safetensors", "ranker/model.safetensors"):
        want, got = load_file(str(reference / name)), load_file(str(out / name))
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=f"{name}:{key}")
    got_report, want_report = (
        json.loads((p / "report.json").read_text()) for p in (out, reference)
    )
    assert got_report.keys() == want_report.keys()
    for system, measures in want_report.items():
        assert got_report[system] == pytest.approx(measures, abs=1e-6), system
    # every training stage's loss curve is whole: the steps before the kill came back
    curves = [_loss_curves(p / "metrics.jsonl") for p in (out, reference)]
    assert curves[0].keys() == curves[1].keys() and curves[0]
    for stage, want in curves[1].items():
        assert curves[0][stage] == pytest.approx(want, abs=1e-5), stage


def _loss_curves(path: Path) -> dict[str, list[float]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    curves = {r["stage"]: r["losses"] for r in records if "losses" in r}
    for r in records:
        if "losses" in r:
            assert r["steps"] == len(r["losses"]) and r["seconds"] > 0, r["stage"]
    return curves


def test_unknown_preset_is_a_clear_error(toy_beir: Path, tmp_path: Path) -> None:
    code = main(["train", str(toy_beir), "--preset", "huge", "--out", str(tmp_path / "x")])
    assert code == 2


@pytest.mark.parametrize("name", ["quick", "full", "toy"])
def test_presets_are_valid_configs(name: str) -> None:
    from ar2.config import AR2Config, load_ar2_config, load_toml
    from ar2.config import preset_path as _preset_path

    cfg = load_ar2_config(load_toml(_preset_path(name)), name)
    assert isinstance(cfg, AR2Config) and cfg.rounds >= 1 and cfg.g0.steps > 0


def test_config_typos_are_reported_with_the_valid_keys(tmp_path: Path) -> None:
    from ar2.config import load_ar2_config
    from ar2.errors import Ar2Error

    with pytest.raises(Ar2Error, match=r"\[g0\].*unknown key.*'stpes'.*valid keys"):
        load_ar2_config({"g0": {"stpes": 3}}, "my.toml")


def test_skip_d0_starts_the_rounds_from_a_fresh_seeded_ranker(
    toy_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, model, _ = toy_run
    config = _toy_toml(tmp_path, "rounds = 2", "rounds = 1\nskip_d0 = true")
    out = tmp_path / "skip"
    cmd = _train_cmd(data, model, out, "--config", str(config))
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    stages = [json.loads(x)["stage"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "d0-train" not in stages and "round-1-ranker" in stages
    assert not (out / "checkpoints" / "d0").exists() and (out / "d0" / "ranker").is_dir()


def test_ablation_from_a_warm_start_reuses_g0_and_keeps_round_0_negatives(
    toy_run: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The static-negatives control: G0 and D0 copied, no ranker steps, no refresh."""
    from ar2.train import rounds, steps
    from ar2.train.ar2 import run_ar2

    data, model, base = toy_run
    cfg = _toy_config(model, retriever_loss="contrastive", refresh=False, ranker={"steps": 0})
    read = []
    original = rounds.read_groups
    monkeypatch.setattr(rounds, "read_groups", lambda p: read.append(p.name) or original(p))

    def no_ranker_feedback(*args: Any) -> None:
        raise AssertionError("the contrastive control must not use the AR2 loss")

    monkeypatch.setattr(steps, "ar2_retriever_step_loss", no_ranker_feedback)
    out = tmp_path / "static"
    run_ar2(data, out, cfg, warm_start_from=base)
    assert read == ["round-0", "round-0"]  # both rounds train on G0's negatives
    copied = json.loads((out / "warm_start.json").read_text())["copied"]
    assert {"g0", "d0", "indexes/start"} <= set(copied)
    for name in ("g0/retriever/model.safetensors", "d0/ranker/model.safetensors"):
        assert (out / name).read_bytes() == (base / name).read_bytes()
    stages = [json.loads(x)["stage"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert stages[:4] == ["g0-train", "dev-g-0", "d0-train", "dev-gd-0"]
    assert "round-1-ranker" not in stages and "round-2-retriever" in stages
    # the ranker never trained in the rounds: it is still D0
    from safetensors.numpy import load_file

    d0 = load_file(str(base / "d0" / "ranker" / "model.safetensors"))
    final = load_file(str(out / "ranker" / "model.safetensors"))
    assert all(np.array_equal(d0[k], final[k]) for k in d0)


def test_warm_start_refuses_a_run_with_other_g0_settings(
    toy_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, model, base = toy_run
    config = _toy_toml(tmp_path, "seed = 0", "seed = 1")
    cmd = _train_cmd(
        data, model, tmp_path / "x", "--config", str(config), "--warm-start", str(base)
    )
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 2 and "['seed']" in result.stderr and "Fix:" in result.stderr


def test_ranker_from_g0_starts_from_the_warm_up_retriever(
    toy_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from safetensors.numpy import load_file

    from ar2.train.ar2 import run_ar2

    data, model, base = toy_run
    out = tmp_path / "from-g0"
    cfg = _toy_config(model, ranker_from_g0=True, skip_d0=True, rounds=1)
    run_ar2(data, out, cfg, warm_start_from=base)
    assert "d0" not in json.loads((out / "warm_start.json").read_text())["copied"]
    g0 = load_file(str(out / "g0" / "retriever" / "model.safetensors"))
    d0 = load_file(str(out / "d0" / "ranker" / "model.safetensors"))
    key = "encoder.layer.0.attention.self.query.weight"
    assert np.array_equal(d0[f"bert.{key}"], g0[key])
    start = load_file(str(model / "model.safetensors"))
    assert not np.array_equal(start[key], g0[key])  # G0 trained: a real difference


def test_a_cosine_head_ranker_trains_saves_and_is_described(
    toy_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from safetensors.numpy import load_file

    from ar2.encoders import CrossEncoder
    from ar2.train.ar2 import run_ar2

    data, model, base = toy_run
    out = tmp_path / "cosine"
    run_ar2(data, out, _toy_config(model, ranker_head="cosine", rounds=1), warm_start_from=base)
    assert "d0" not in json.loads((out / "warm_start.json").read_text())["copied"]  # a new D0
    for folder in ("d0/ranker", "ranker"):
        assert not any(
            k.startswith("classifier") for k in load_file(str(out / folder / "model.safetensors"))
        )
        assert CrossEncoder.load(out / folder).config.head == "cosine"
    card = (out / "ranker" / "README.md").read_text()
    assert "library_name: transformers" in card and "CrossEncoder.load" in card
    assert "| head | 'cosine' |" in card
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [
        r["stage"] for r in records if r["stage"].endswith("-ranker") or r["stage"] == "d0-train"
    ] == ["d0-train", "round-1-ranker"]


def test_checkpoint_averaging_delivers_the_mean_of_the_last_rounds(
    toy_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from safetensors.numpy import load_file

    from ar2.encoders import BiEncoder
    from ar2.train.ar2 import run_ar2

    data, model, base = toy_run
    out = tmp_path / "avg"
    cfg = _toy_config(model, average_rounds=2, deliver="last")
    run_ar2(data, out, cfg, warm_start_from=base)
    rounds = [load_file(str(out / "rounds" / r / "retriever" / "model.safetensors")) for r in "12"]
    delivered = load_file(str(out / "retriever" / "model.safetensors"))
    assert delivered.keys() == rounds[0].keys()
    moved = 0
    for key, value in delivered.items():
        if value.dtype.kind == "f":  # by hand: the mean of rounds 1 and 2
            np.testing.assert_allclose(value, (rounds[0][key] + rounds[1][key]) / 2, atol=1e-6)
            moved += not np.array_equal(rounds[0][key], rounds[1][key])
    assert moved  # the rounds differ: the mean is neither of them
    assert BiEncoder.load(out / "retriever").shared  # the rounds share one tower: so does the mean
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    avg = [r for r in records if r["stage"] == "dev-avg"]
    assert len(avg) == 1 and avg[0]["rounds"] == [1, 2] and 0 <= avg[0]["dev"]["G"] <= 1
    assert (out / "indexes" / "averaged").is_dir()
    assert "its retriever averaged over rounds [1, 2]" in (out / "report.md").read_text()


def test_averaging_a_shared_and_a_separate_tower_retriever_averages_each_tower(
    tiny_bert: Path,
) -> None:
    import torch

    from ar2.encoders import BiEncoder
    from ar2.train.average import average_encoders

    shared, separate = BiEncoder.load(tiny_bert), BiEncoder.load(tiny_bert).untie()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # each of the three towers differs from the others
        for model in (shared.doc_model, separate.doc_model, separate.query_model):
            for param in model.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=gen))
    by_hand = {
        tower: {k: (shared.doc_model.state_dict()[k] + getattr(separate, tower).state_dict()[k]) / 2
                for k, v in shared.doc_model.state_dict().items() if v.is_floating_point()}
        for tower in ("doc_model", "query_model")
    }  # fmt: skip
    merged = average_encoders([shared, separate])
    assert not merged.shared
    for tower, expected in by_hand.items():
        state = getattr(merged, tower).state_dict()
        for key, value in expected.items():
            torch.testing.assert_close(state[key], value)


def test_the_index_table_sets_every_refresh_index(
    toy_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """``[index]`` chooses the FAISS index that refreshes build (exact by default)."""
    from ar2.index import read_manifest

    data, model, reference = toy_run
    config = _toy_toml(tmp_path, "rounds = 2", "rounds = 1")
    config.write_text(config.read_text() + '\n[index]\npreset = "hnsw"\n')
    out = tmp_path / "hnsw"
    result = subprocess.run(
        _train_cmd(data, model, out, "--config", str(config)), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for name in ("indexes/round-0", "indexes/round-1", "index"):
        assert read_manifest(out / name)["factory"] == "HNSW32", name
    assert read_manifest(reference / "indexes" / "round-1")["factory"] == "Flat"
    assert not list((out / "indexes").glob(".*"))  # the encoded parts were removed


@pytest.mark.integration
def test_a_refresh_killed_after_its_index_was_saved_keeps_it_and_clears_leftovers(
    toy_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """The state a kill leaves between saving round 2's index and writing its negatives, with
    the debris of an earlier kill (encoded parts, a half-saved index): ``--resume`` keeps the
    saved index, removes the debris and mines the same negatives."""
    import shutil

    from ar2.data.training import read_groups

    data, model, reference = toy_run
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for rel in ("mined/round-2", "index", "retriever", "ranker"):
        shutil.rmtree(out / rel)
    (out / "report.json").unlink()
    debris = [out / "indexes" / ".round-2.parts", out / "indexes" / ".round-2.x1y2.tmp"]
    for folder in debris:
        folder.mkdir()
        np.save(folder / "part-00003.npy", np.ones((2, 4), dtype=np.float32))
    kept = out / "indexes" / "round-2" / "index.faiss"
    before = kept.stat().st_mtime_ns
    resumed = subprocess.run(_train_cmd(data, model, out, "--resume"), capture_output=True,
                             text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert kept.stat().st_mtime_ns == before  # not rebuilt
    assert not any(folder.exists() for folder in debris)
    got, want = (
        [(g.query.id, g.negatives) for g in read_groups(run / "mined" / "round-2")]
        for run in (out, reference)
    )
    assert got == want
    got_report, want_report = (
        json.loads((p / "report.json").read_text()) for p in (out, reference)
    )
    assert got_report.keys() == want_report.keys()
    for system, measures in want_report.items():
        assert got_report[system] == pytest.approx(measures, abs=1e-6), system


def test_a_run_from_before_a_config_field_existed_still_resumes(
    toy_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """``config.json`` written before ``[index]`` (a table) and ``g0.head_lr`` (a field of a
    table) existed: their defaults fill in; a real change is refused, naming the key."""
    import shutil

    data, model, reference = toy_run
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    saved = json.loads((out / "config.json").read_text())
    del saved["index"], saved["g0"]["head_lr"]
    (out / "config.json").write_text(json.dumps(saved))
    resumed = subprocess.run(_train_cmd(data, model, out, "--resume"), capture_output=True,
                             text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    config = _toy_toml(tmp_path, "rounds = 2", "rounds = 2")
    config.write_text(config.read_text() + '\n[index]\npreset = "hnsw"\n')
    changed = subprocess.run(_train_cmd(data, model, out, "--resume", "--config", str(config)),
                             capture_output=True, text=True)  # fmt: skip
    assert changed.returncode == 2 and "different config (index.preset)" in changed.stderr


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}  # fmt: skip


def test_a_run_records_its_data_and_resumes_only_on_it(
    toy_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """`ar2 train B --out R --resume` on a run of A rewrote R/index with A's ids and B's texts
    and failed with a KeyError: now it is refused before anything is written."""
    import shutil

    data, model, run = toy_run
    record = json.loads((run / "config.json").read_text())["data"]
    assert record["path"] == str(data.resolve())
    assert set(record["files"]) == {"corpus.jsonl", "queries.jsonl", "qrels/test.tsv",
                                    "qrels/train.tsv"}  # fmt: skip
    out, other = tmp_path / "run", tmp_path / "other"
    shutil.copytree(run, out)
    shutil.copytree(data, other)
    corpus = other / "corpus.jsonl"
    corpus.write_text(corpus.read_text().replace("study", "survey", 1))
    before = _tree(out)
    result = subprocess.run(_train_cmd(other, model, out, "--resume"), capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "other data" in result.stderr and "corpus.jsonl" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _tree(out) == before
    shutil.copytree(data, tmp_path / "moved")  # the same data elsewhere: the same run
    same = subprocess.run(_train_cmd(tmp_path / "moved", model, out, "--resume"),
                          capture_output=True, text=True)  # fmt: skip
    assert same.returncode == 0, same.stderr


class _Stop(Exception):
    """Raised in place of loading the data: the run stops once its config.json is written."""


@pytest.fixture
def stop_after_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from ar2.train import ar2 as train_ar2

    def stop(*args: Any) -> None:
        raise _Stop

    monkeypatch.setattr(train_ar2, "load_train_data", stop)


def test_resume_into_what_is_not_a_run_is_refused(
    toy_run: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    stop_after_config: None,
) -> None:  # fmt: skip
    """A folder of other files is refused; a new one starts a run (`scripts/demo.sh` passes
    --resume always, on a fresh machine too)."""
    data, model, _ = toy_run
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.md").write_text("mine")
    argv = ["-q", "train", str(data), "--preset", "toy", "--model", str(model), "--resume"]
    assert main([*argv, "--out", str(folder)]) == 2
    assert "is not an ar2 training run" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["notes.md"]

    with pytest.raises(_Stop):
        main([*argv, "--out", str(tmp_path / "new")])
    assert (tmp_path / "new" / "config.json").is_file()


def test_overwrite_starts_again_in_a_folder_of_other_files(
    toy_run: tuple[Path, Path, Path], tmp_path: Path, stop_after_config: None
) -> None:
    data, model, _ = toy_run
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    argv = ["-q", "train", str(data), "--preset", "toy", "--model", str(model), "--out", str(out)]
    assert main(argv) == 2 and (out / "notes.md").is_file()  # refused without --overwrite

    with pytest.raises(_Stop):
        main([*argv, "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    assert main([*argv, "--overwrite", "--resume"]) == 2  # one or the other


def test_warm_start_from_a_run_on_other_data_is_refused(
    toy_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    import shutil

    from ar2.errors import Ar2Error
    from ar2.train.ar2 import run_ar2

    data, model, base = toy_run
    other = tmp_path / "other"
    shutil.copytree(data, other)
    (other / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nt0q0\tt0d0\t2\n")
    with pytest.raises(Ar2Error, match="other data"):
        run_ar2(other, tmp_path / "warm", _toy_config(model), warm_start_from=base)
    assert not (tmp_path / "warm" / "config.json").exists()  # refused before anything is written


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("rounds = 2", 'rounds = "two"'), "rounds = 'two' is a string, not an integer"),
        (("[g0]", "g0 = 5\n[g1]"), "g0 = 5 is an integer, not a table"),
        (("doc_max_length = 32", "doc_max_length = 256"), "at most 128 tokens"),
        (("ranker_max_length = 40", "ranker_max_length = 400"), "ranker_max_length = 400"),
        (("rounds = 2", 'rounds = 2\neval_measure = "nDCG@ten"'), "eval_measure"),
        (("[retriever]", '[index]\nfactory = "IVF100,Flat"\n[retriever]'), "needs at least 100"),
    ],
)
def test_bad_settings_fail_before_any_training(
    change: tuple[str, str], expected: str, toy_run: tuple[Path, Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    data, model, _ = toy_run
    config = _toy_toml(tmp_path, *change)
    out = tmp_path / "run"
    argv = ["-q", "train", str(data), "--config", str(config), "--model", str(model),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and err.startswith("ar2: error:") and len(err.splitlines()) == 1
    assert not (out / "config.json").exists()  # refused before anything is written


def test_the_models_carry_cards_and_still_load_in_sentence_transformers(
    toy_run: tuple[Path, Path, Path],
) -> None:
    from sentence_transformers import CrossEncoder as STCrossEncoder
    from sentence_transformers import SentenceTransformer

    from ar2.encoders import BiEncoder

    data, model, out = toy_run
    report = json.loads((out / "report.json").read_text())
    for role in ("retriever", "ranker"):
        card = (out / role / "README.md").read_text()
        assert card.startswith("---\nlibrary_name: sentence-transformers\n")
        assert f"base_model: {json.dumps(str(model))}\n" in card  # quoted YAML
        assert f"| ar2-g | {report['ar2-g']['nDCG@10']:.4f} |" in card
        assert f"ar2 train {data.resolve()} --config {out.resolve()}/config.json" in card
    st = SentenceTransformer(str(out / "retriever"), device="cpu")
    ours = BiEncoder.load(out / "retriever", precision="fp32")
    texts = ["cats w1 study", "dogs chase balls"]
    np.testing.assert_allclose(st.encode(texts), ours.encode_docs(texts), atol=1e-5)
    queries = ["cats", "what do dogs chase"]  # short: within both cut-offs
    np.testing.assert_allclose(st.encode(queries), ours.encode_queries(queries), atol=1e-5)
    assert STCrossEncoder(str(out / "ranker"), device="cpu").predict([("cats", "cats w1")]).shape


def test_a_runs_config_json_trains_again_as_that_run(
    toy_run: tuple[Path, Path, Path], tmp_path: Path, stop_after_config: None
) -> None:
    """The cards' reproduce command: `ar2 train DATA --config RUN/config.json`."""
    data, _, run = toy_run
    again = tmp_path / "again"
    with pytest.raises(_Stop):
        main(["-q", "train", str(data), "--config", str(run / "config.json"), "--out", str(again)])
    before, after = (json.loads((p / "config.json").read_text()) for p in (run, again))
    assert after == before  # the same settings, and the same data record


def test_false_negative_filters_apply_to_every_mining_and_are_counted(tmp_path: Path) -> None:
    from ar2.train.ar2 import run_ar2
    from conftest import build_tiny_bert

    data = write_train_toy(tmp_path / "data")
    model = build_tiny_bert(tmp_path / "tiny")
    cfg = _toy_config(model, mine_rank_start=2, mine_relative_margin=0.01, rounds=1)
    run_ar2(data, tmp_path / "run", cfg)
    for folder in ("bm25", "round-0", "round-1"):
        path = tmp_path / "run" / "mined" / folder
        record = json.loads((path / "manifest.json").read_text())["false_negatives"]
        assert record["filtered"] and record["rank_start"] == 2
        lines = [json.loads(x) for x in (path / "groups.jsonl").read_text().splitlines()]
        dropped = [pair for g in lines for pair in g.get("filtered", [])]
        by_filter = {name: sum(p[0] == name for p in dropped) for name in record["dropped"]}
        assert by_filter == record["dropped"] and record["dropped"]["rank_window"] > 0
        # BM25 ranks each toy positive first: the window's other candidate goes
        for g in lines:  # nothing dropped is a negative
            assert not {doc for _, doc in g.get("filtered", [])} & set(g["negatives"])


def test_the_report_tests_each_stage_against_the_one_before(
    toy_run: tuple[Path, Path, Path],
) -> None:
    from ar2.report import read_per_query

    _, _, out = toy_run
    rows = json.loads((out / "stage_tests.json").read_text())
    pairs = [(r["baseline"], r["system"]) for r in rows if r["measure"] == "nDCG@10"]
    assert pairs == [("start", "g0"), ("g0", "ar2-g"), ("ar2-g", "ar2-g+d")]
    values = read_per_query(out)
    for row in rows:
        now, before = values[row["system"]][row["measure"]], values[row["baseline"]][row["measure"]]
        by_hand = sum(now[q] - before[q] for q in now) / len(now)
        assert row["mean_diff"] == pytest.approx(by_hand)
    assert "## Each stage against the one before it" in (out / "report.md").read_text()


def test_the_run_delivers_the_round_best_on_dev(
    toy_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Round 0 made best on dev (its metrics line edited): a resumed run delivers G0 and D0
    with round 0's fusion weight; ``deliver = "last"`` keeps the last round's."""
    import shutil

    data, model, base = toy_run
    out = tmp_path / "run"
    shutil.copytree(base, out)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        if line["stage"] == "dev-g-0":
            line["dev"]["G"] = 2.0  # above any nDCG: round 0 is best
    (out / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["-q", "train", str(data), "--preset", "toy", "--model", str(model),
                 "--out", str(out), "--resume"]) == 0  # fmt: skip
    for got, want in (("retriever", "g0/retriever"), ("ranker", "d0/ranker")):
        weights = "model.safetensors"
        assert (out / got / weights).read_bytes() == (out / want / weights).read_bytes()
    weight = json.loads((out / "dev_runs" / "round-0.fusion.json").read_text())["weight"]
    manifest = json.loads((out / "ranker" / "manifest.json").read_text())
    assert manifest["config"]["fusion_weight"] == weight
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["systems"]["training"]["delivered"].startswith("round 0 of 2")
    # the last round's, whatever dev says
    last = tmp_path / "last"
    shutil.copytree(out, last)
    config = json.loads((last / "config.json").read_text())
    (last / "config.json").write_text(json.dumps(config | {"deliver": "last"}))
    assert main(["-q", "train", str(data), "--config", str(last / "config.json"),
                 "--model", str(model), "--out", str(last), "--resume"]) == 0  # fmt: skip
    weights = "model.safetensors"
    assert (last / "retriever" / weights).read_bytes() == (
        last / "rounds" / "2" / "retriever" / weights
    ).read_bytes()
