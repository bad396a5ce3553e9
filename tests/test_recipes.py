"""``ar2 train --recipe``: the registry's settings, configs that contradict their recipe, and
the ADORE stage the ``adore`` recipe adds after the rounds (delivered, resumable, logged)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ar2 import config
from ar2.errors import Ar2Error
from ar2.train.recipes import RECIPES, apply, contradictions


def test_the_registry_is_keyed_by_the_configs_names_and_its_settings_are_valid() -> None:
    assert tuple(RECIPES) == config.RECIPES
    for name in RECIPES:
        cfg = config.load_ar2_config(apply(name, {}), name)
        assert cfg.recipe == name
        assert contradictions(name, _asdict(cfg)) == []


def test_a_config_that_contradicts_its_recipe_is_refused(tiny_bert: Path) -> None:
    from ar2.train.checks import check_settings

    model = {"retriever_model": str(tiny_bert), "ranker_model": str(tiny_bert),
             "doc_max_length": 64}  # fmt: skip
    check_settings(config.load_ar2_config(apply("star", model)))
    bad = config.load_ar2_config(apply("star", model) | {"refresh": True})
    with pytest.raises(Ar2Error, match=r"recipe = 'star', but refresh = true \(the recipe sets "
                       r"false\)\. Fix: leave these settings to the recipe"):  # fmt: skip
        check_settings(bad)
    named = config.load_ar2_config(model | {"recipe": "adore"})  # named, not applied
    with pytest.raises(Ar2Error, match="retriever_loss = 'ar2'.*refresh = true.*ranker.steps = 50"):
        check_settings(named)


def test_the_command_line_applies_the_recipe_under_set(
    tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ar2.cli import _train_config, build_parser, main

    argv = ["train", "d", "--out", "o", "--preset", "toy", "--recipe", "star", "--set", "rounds=1"]
    cfg = _train_config(build_parser().parse_args(argv))
    assert (cfg.recipe, cfg.retriever_loss, cfg.refresh, cfg.ranker.steps, cfg.rounds) == (
        "star", "contrastive", False, 0, 1)  # fmt: skip
    data = tmp_path / "data"
    from conftest import write_train_toy

    write_train_toy(data)
    out = tmp_path / "run"
    args = ["train", str(data), "--preset", "toy", "--model", str(tiny_bert), "--out", str(out),
            "--recipe", "star", "--set", "refresh=true"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "recipe = 'star', but refresh = true" in err and "Traceback" not in err
    assert not (out / "g0").exists()  # refused before any training


def test_the_adore_recipe_trains_and_delivers_the_query_tower_against_the_rounds_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The distinctive part: after the rounds, the delivered retriever's query tower moves
    against the delivered round's index; its document tower and the index stay."""
    pytest.importorskip("torch")
    from ar2 import losses
    from ar2.encoders import BiEncoder
    from ar2.index import FaissIndex
    from ar2.train.ar2 import run_ar2
    from conftest import build_tiny_bert, killed_at, write_train_toy

    data = write_train_toy(tmp_path / "data")
    model = build_tiny_bert(tmp_path / "tiny", dropout=0.0)
    raw = config.load_toml(config.preset_path("toy")) | {
        "retriever_model": str(model), "ranker_model": str(model), "rounds": 1,
        "deliver": "last", "adore_negatives": 10}  # fmt: skip
    raw = apply("adore", raw)
    raw["adore"] |= {"steps": 6, "batch_size": 4, "lr": 1e-3}
    cfg = config.load_ar2_config(raw, "toy adore")
    out = tmp_path / "run"
    monkeypatch.setattr(losses, "rank_weighted_pairwise",
                        killed_at(3, losses.rank_weighted_pairwise))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):  # killed inside the ADORE stage
        run_ar2(data, out, cfg)
    monkeypatch.undo()
    assert (out / "checkpoints" / "adore").is_dir() and not (out / "adore").exists()
    run_ar2(data, out, cfg, resume=True)

    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    [stage] = [r for r in records if r["stage"] == "adore-train"]
    assert len(stage["losses"]) == 6  # 2 before the kill (checkpoint every 2), 4 after
    [dev] = [r for r in records if r["stage"] == "dev-adore"]
    assert dev["index"] == "round-1" and 0 <= dev["dev"]["G"] <= 1
    [fused] = [r for r in records if r["stage"] == "dev-gd-adore"]  # the weight is ADORE's
    tuned = json.loads((out / "dev_runs" / "adore.fusion.json").read_text())["weight"]
    assert fused["fusion_weight"] == tuned
    saved = json.loads((out / "ranker" / "manifest.json").read_text())
    assert saved["config"]["fusion_weight"] == tuned
    round_1 = BiEncoder.load(out / "rounds" / "1" / "retriever")
    delivered = BiEncoder.load(out / "retriever")
    texts = ["cats w1 study", "heart w25 risk"]
    np.testing.assert_allclose(
        delivered.encode_queries(texts),
        BiEncoder.load(out / "adore" / "retriever").encode_queries(texts),
        atol=1e-6,
    )
    assert not np.allclose(
        delivered.encode_queries(texts), round_1.encode_queries(texts), atol=1e-4
    )
    np.testing.assert_allclose(delivered.encode_docs(texts), round_1.encode_docs(texts), atol=1e-6)
    final, mined = FaissIndex.load(out / "index"), FaissIndex.load(out / "indexes" / "round-1")
    np.testing.assert_array_equal(final.index.reconstruct_n(0, 5), mined.index.reconstruct_n(0, 5))
    report = (out / "report.md").read_text()
    assert "ADORE steps against that round's index" in report


def _asdict(cfg: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg)


def test_the_training_chart_marks_the_adore_stage_beside_the_rounds() -> None:
    pytest.importorskip("matplotlib")
    from ar2.charts import training_figure

    records = [
        {"stage": "dev-g-0", "round": 0, "dev": {"G": 0.70}},
        {"stage": "dev-gd-0", "round": 0, "dev": {"G+D": 0.72, "D": 0.65}},
        {"stage": "dev-g-1", "round": 1, "dev": {"G": 0.71}},
        {"stage": "dev-adore", "round": 1, "dev": {"G": 0.75}},
        {"stage": "dev-gd-adore", "round": 1, "dev": {"G+D": 0.76, "D": 0.66}},
    ]
    ax = training_figure(records).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["G"].get_ydata()) == [0.70, 0.71]  # the rounds' line leaves ADORE out
    assert list(lines["G, ADORE"].get_ydata()) == [0.75]
    assert list(lines["G+D, ADORE"].get_xdata()) == [1]


def test_the_dexml_step_masks_a_querys_other_positives_wherever_they_sit_in_the_batch() -> None:
    """DEXML's distinctive part: q0's second positive d3 is q1's drawn positive. The decoupled
    step leaves that column out of q0's denominator and counts it as q0's positive too; the
    contrastive step (the loss without the mask) treats it as a negative."""
    torch = pytest.importorskip("torch")
    import math

    from ar2.config import StageConfig
    from ar2.data.training import TrainingGroup
    from ar2.train import steps
    from ar2.types import Doc, Query

    vec = {"q0": [1.0, 0.0], "q1": [0.0, 1.0], "d0": [0.9, 0.1], "d9": [0.2, -0.3],
           "d3": [0.6, 0.8], "d8": [-0.5, 0.4]}  # fmt: skip

    class Fixed:  # an encoder whose vectors are given
        def embed_queries(self, queries: list[Query]) -> Any:
            return torch.tensor([vec[q.id] for q in queries], dtype=torch.float64)

        def embed_docs(self, docs: list[Doc], doc_len: Any = None) -> Any:
            return torch.tensor([vec[d.id] for d in docs], dtype=torch.float64)

    docs = {d: Doc(d, d) for d in ("d0", "d3", "d8", "d9")}
    groups = [TrainingGroup(Query("q0", "q0"), ("d0", "d3"), ("d9",)),
              TrainingGroup(Query("q1", "q1"), ("d3",), ("d8",))]  # fmt: skip
    stage = StageConfig(batch_size=2, n_neg=1)
    drawn = (steps.draw_batch(groups, docs, stage, 0, "t", step) for step in range(50))
    # a step where q0 drew d0, so d3 appears once in the batch, as q1's positive
    batch = next(b for b in drawn if "d0" in b.ids and b.ids.count("d3") == 1)
    scale = 2.0
    ids = list(batch.ids)
    s = {q.id: [scale * sum(a * b for a, b in zip(vec[q.id], vec[d])) for d in ids]
         for q in batch.queries}  # fmt: skip

    def term(row: list[float], pos: set[int], col: int) -> float:
        neg = sum(math.exp(x) for j, x in enumerate(row) if j not in pos)
        return math.log1p(neg / math.exp(row[col]))

    p0 = {ids.index("d0"), ids.index("d3")}
    p1 = {ids.index("d3")}
    expected = ((term(s["q0"], p0, ids.index("d0")) + term(s["q0"], p0, ids.index("d3"))) / 2
                + term(s["q1"], p1, ids.index("d3"))) / 2  # fmt: skip
    got = steps.decoupled_retriever_loss(Fixed(), batch, scale)  # type: ignore[arg-type]
    assert got.item() == pytest.approx(expected, rel=1e-9)
    plain = steps.contrastive_retriever_loss(Fixed(), batch, scale)  # type: ignore[arg-type]
    assert abs(plain.item() - got.item()) > 0.05


@pytest.mark.integration
def test_the_dexml_recipe_trains_its_round_with_the_decoupled_loss_and_resumes_after_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    from ar2 import losses
    from ar2.train.ar2 import run_ar2
    from conftest import assert_same_round_retriever, killed_at, recipe_toy

    data, cfg = recipe_toy(tmp_path, "dexml")
    assert (cfg.retriever_loss, cfg.ranker.steps, cfg.refresh) == ("decoupled", 0, True)
    calls: list[int] = []

    def counted(**kwargs: Any) -> Any:
        calls.append(1)
        return real(**kwargs)

    real = losses.decoupled_softmax
    monkeypatch.setattr(losses, "decoupled_softmax", counted)
    straight = tmp_path / "straight"
    run_ar2(data, straight, cfg)
    assert len(calls) == cfg.retriever.steps  # every retriever step of the round, no other
    monkeypatch.setattr(losses, "decoupled_softmax", killed_at(2, real))
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_ar2(data, out, cfg)
    monkeypatch.setattr(losses, "decoupled_softmax", real)
    run_ar2(data, out, cfg, resume=True)
    assert_same_round_retriever(out, straight)


def _filled_toy(root: Path, recipe: str) -> tuple[Path, Any]:
    """The one-round toy of ``recipe`` (``recipe_toy``) with 260 filler documents: 300 in
    all, enough for 8-bit PQ."""
    from conftest import recipe_toy

    data, cfg = recipe_toy(root, recipe)
    with (data / "corpus.jsonl").open("a") as f:
        for i in range(260):
            f.write(json.dumps({"_id": f"f{i}", "title": "", "text": f"w{i % 40} filler"}) + "\n")
    return data, cfg


def test_the_repconc_recipe_continues_the_finished_run_into_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--recipe repconc`` is AR2's run, then ``ar2 repconc`` over it in ``OUT/repconc``
    (with its settings made from the run's seed); a resumed run keeps what it made."""
    pytest.importorskip("faiss")
    import dataclasses

    from ar2.config import RepCONCConfig, StageConfig
    from ar2.train import follow_up
    from ar2.train.ar2 import run_ar2
    from conftest import assert_per_query_is_the_report, recipe_toy

    small = RepCONCConfig(
        m=8, negatives=10, stage=StageConfig(steps=2, batch_size=4, n_neg=0, head_lr=1e-2),
        constrained=StageConfig(steps=2, batch_size=4, n_neg=2, head_lr=1e-2),
    )  # fmt: skip
    settings = follow_up.FOLLOW_UPS["repconc"]
    monkeypatch.setitem(follow_up.FOLLOW_UPS, "repconc", dataclasses.replace(
        settings, settings=lambda seed: dataclasses.replace(small, seed=seed)))  # fmt: skip
    small_data, small_cfg = recipe_toy(tmp_path / "small", "repconc")
    with pytest.raises(Ar2Error, match="40 documents; the repconc recipe compresses"):
        run_ar2(small_data, tmp_path / "refused", small_cfg)
    assert not (tmp_path / "refused" / "g0").exists()  # before any training

    data, cfg = _filled_toy(tmp_path, "repconc")
    out = tmp_path / "run"
    run_ar2(data, out, cfg)
    report = json.loads((out / "repconc" / "report.json").read_text())
    assert set(report["test"]["nDCG@10"]) == {"uncompressed", "opq-pq", "jpq", "repconc"}
    assert_per_query_is_the_report(out / "repconc", report)
    record = json.loads((out / "repconc" / "repconc.json").read_text())
    assert record["run"] == str(out.resolve()) and record["config"]["seed"] == cfg.seed
    assert record["config"]["constrained"]["steps"] == 2
    assert "repconc/: `ar2 repconc` over this run" in (out / "report.md").read_text()
    made = (out / "repconc" / "index" / "manifest.json").stat().st_mtime_ns
    run_ar2(data, out, cfg, resume=True)
    assert (out / "repconc" / "index" / "manifest.json").stat().st_mtime_ns == made


def test_the_sparse_recipe_continues_the_finished_run_into_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("seismic")
    import dataclasses

    from ar2.config import SparseConfig, StageConfig
    from ar2.train import follow_up
    from ar2.train.ar2 import run_ar2
    from conftest import assert_per_query_is_the_report, recipe_toy

    small = SparseConfig(doc_max_length=32, flops_warmup=2, checkpoint_every=2,
                         stage=StageConfig(steps=2, batch_size=4, n_neg=2, lr=1e-3))  # fmt: skip
    settings = follow_up.FOLLOW_UPS["sparse"]
    monkeypatch.setitem(follow_up.FOLLOW_UPS, "sparse", dataclasses.replace(
        settings, settings=lambda seed: dataclasses.replace(small, seed=seed)))  # fmt: skip
    data, cfg = recipe_toy(tmp_path, "sparse")
    out = tmp_path / "run"
    run_ar2(data, out, cfg)
    report = json.loads((out / "sparse" / "report.json").read_text())
    assert set(report["test"]["nDCG@10"]) == {"sparse", "bm25", "dense"}
    assert_per_query_is_the_report(out / "sparse", report)
    assert json.loads((out / "sparse" / "sparse.json").read_text())["run"] == str(out.resolve())
    assert (out / "sparse" / "index" / "manifest.json").is_file()
    assert "sparse/: `ar2 sparse` over this run" in (out / "report.md").read_text()
