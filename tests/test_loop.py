"""The training loop's pieces: per-step randomness, batches, optimiser groups, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ar2.config import StageConfig  # noqa: E402
from ar2.data.training import TrainingGroup  # noqa: E402
from ar2.train.loop import Stepper, load_checkpoint, save_checkpoint, step_rng  # noqa: E402
from ar2.train.steps import draw_batch  # noqa: E402
from ar2.types import Doc, Query  # noqa: E402


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential()
    model.add_module("body", torch.nn.Linear(4, 4))
    model.add_module("LayerNorm", torch.nn.LayerNorm(4))
    model.add_module("classifier", torch.nn.Linear(4, 1))
    return model


def _train(model: torch.nn.Module, stepper: Stepper, steps: range) -> None:
    for step in steps:
        torch.manual_seed(step)
        x = torch.randn(8, 4)
        stepper.step(model(x).pow(2).mean())


def test_step_rng_depends_only_on_seed_stage_step() -> None:
    assert step_rng(1, "g0", 5).random() == step_rng(1, "g0", 5).random()
    assert step_rng(1, "g0", 5).random() != step_rng(1, "g0", 6).random()
    assert step_rng(1, "g0", 5).random() != step_rng(1, "d0", 5).random()


def test_draw_batch_is_a_pure_function_of_the_step_and_covers_each_epoch() -> None:
    docs = {f"d{i}": Doc(f"d{i}", f"text {i}") for i in range(20)}
    groups = [
        TrainingGroup(Query(f"q{i}", f"q {i}"), (f"d{i}",), tuple(f"d{j}" for j in range(10, 20)))
        for i in range(6)
    ]
    cfg = StageConfig(batch_size=3, n_neg=2)
    first = draw_batch(groups, docs, cfg, seed=7, stage="s", step=4)
    assert first == draw_batch(groups, docs, cfg, seed=7, stage="s", step=4)
    epoch = [q.id for step in (0, 1) for q in draw_batch(groups, docs, cfg, 7, "s", step).queries]
    assert sorted(epoch) == sorted(g.query.id for g in groups)  # each query once per epoch
    for i, query in enumerate(first.queries):
        group = first.docs[i * 3 : (i + 1) * 3]
        assert group[0].id == "d" + query.id[1:]  # positive first
        assert len({d.id for d in group[1:]}) == 2 and all(int(d.id[1:]) >= 10 for d in group[1:])


def test_head_lr_and_no_decay_groups() -> None:
    cfg = StageConfig(lr=1e-5, head_lr=1e-3, weight_decay=0.01, steps=10)
    stepper = Stepper(_model(), cfg, total_steps=10)
    by_lr = {}
    for group in stepper.optimizer.param_groups:
        for p in group["params"]:
            by_lr[id(p)] = (group["initial_lr"], group["weight_decay"])
    model = stepper.model
    assert by_lr[id(model.classifier.weight)] == (1e-3, 0.01)
    assert by_lr[id(model.classifier.bias)] == (1e-3, 0.0)
    assert by_lr[id(model.body.weight)] == (1e-5, 0.01)
    assert by_lr[id(model.LayerNorm.weight)] == (1e-5, 0.0)


def test_checkpoint_resume_equals_uninterrupted_training(tmp_path: Path) -> None:
    cfg = StageConfig(lr=1e-2, steps=10, warmup_ratio=0.2)
    straight = _model()
    stepper = Stepper(straight, cfg, 10)
    _train(straight, stepper, range(10))

    first = _model()
    stepper_a = Stepper(first, cfg, 10)
    _train(first, stepper_a, range(4))
    save_checkpoint(tmp_path / "ckpt", {"m": first}, {"m": stepper_a}, {"step": 4})

    resumed = _model(seed=99)  # different weights: the checkpoint must overwrite them
    stepper_b = Stepper(resumed, cfg, 10)
    meta = load_checkpoint(tmp_path / "ckpt", {"m": resumed}, {"m": stepper_b})
    assert meta["step"] == 4 and stepper_b.steps == 4
    _train(resumed, stepper_b, range(4, 10))
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)
    assert stepper_b.scheduler.get_last_lr() == stepper.scheduler.get_last_lr()
    assert not list(tmp_path.glob("*.pkl")) and (tmp_path / "ckpt" / "state.safetensors").is_file()
