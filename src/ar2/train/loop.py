"""The one step loop every trainer uses: AdamW, linear schedule, clipping, checkpoints.

Randomness is a pure function of ``(seed, stage, step)`` (:func:`step_rng`), so a run resumed
from a checkpoint draws the same batches, negatives and dropout masks as an uninterrupted one.
Checkpoints hold tensors in safetensors and everything else in JSON: no pickles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ar2 import distributed
from ar2._io import atomic_dir, atomic_write_json
from ar2._optional import require
from ar2.config import StageConfig
from ar2.errors import Ar2Error

log = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"
META_FILE = "state.json"


def step_rng(seed: int, stage: str, step: int) -> random.Random:
    """A Python RNG for one step of one stage, independent of everything that ran before.

    Example:
        >>> step_rng(42, "g0", 3).random() == step_rng(42, "g0", 3).random()
        True
    """
    digest = hashlib.sha256(f"{seed}/{stage}/{step}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


class Stepper:
    """AdamW + linear warm-up and decay over ``total_steps`` + gradient clipping, for one model."""

    def __init__(self, model: Any, cfg: StageConfig, total_steps: int) -> None:
        torch = require("torch")
        transformers = require("transformers")
        self.model, self.cfg, self.steps = model, cfg, 0
        self.optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, eps=1e-8)
        warmup = int(cfg.warmup_ratio * total_steps)
        self.scheduler = transformers.get_linear_schedule_with_warmup(
            self.optimizer, warmup, max(total_steps, 1)
        )

    def step(self, loss: Any) -> float:
        """Backward, clip, update, advance the schedule; returns the loss as a float.

        Under data parallelism the model runs inside :func:`ar2.distributed.data_parallel`, so
        ``backward`` averages the gradients over the processes before clipping.
        """
        torch = require("torch")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return distributed.all_mean(float(loss.detach()))  # this shard's loss, averaged

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Optimizer and schedule state split into tensors and JSON-able metadata."""
        tensors, meta = _flatten(self.optimizer.state_dict()["state"])
        return tensors, {
            "steps": self.steps,
            "optimizer_state_meta": meta,
            "param_groups": self.optimizer.state_dict()["param_groups"],
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state(self, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""
        state = _unflatten(tensors, meta["optimizer_state_meta"])
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.scheduler.load_state_dict(meta["scheduler"])
        self.steps = meta["steps"]


def save_checkpoint(
    path: Path, models: dict[str, Any], steppers: dict[str, Stepper], meta: dict[str, Any]
) -> None:
    """Write models' weights, optimizers and ``meta`` atomically into ``path`` (on rank 0:
    data parallelism keeps every rank's models and optimizers equal)."""
    if not distributed.world().main:
        return
    safetensors = require("safetensors.torch", extra="train")
    tensors: dict[str, Any] = {}
    for name, model in models.items():
        for key, value in model.state_dict().items():
            tensors[f"model/{name}/{key}"] = value.detach().contiguous().clone()
    optim_meta = {}
    for name, stepper in steppers.items():
        flat, optim_meta[name] = stepper.state()
        tensors.update({f"optim/{name}/{k}": v.contiguous() for k, v in flat.items()})
    with atomic_dir(path) as tmp:
        safetensors.save_file(tensors, str(tmp / STATE_FILE))
        atomic_write_json(tmp / META_FILE, meta | {"optim": optim_meta})


def safetensors_error() -> type[Exception]:
    """The error safetensors raises on a damaged file."""
    return require("safetensors", extra="train").SafetensorError  # type: ignore[no-any-return]


def load_checkpoint(path: Path, models: dict[str, Any], steppers: dict[str, Stepper]) -> dict:
    """Load a checkpoint into ``models`` and ``steppers``; returns its metadata."""
    safetensors = require("safetensors.torch", extra="train")
    try:
        tensors = safetensors.load_file(str(path / STATE_FILE))
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or "optim" not in meta:
            raise ValueError(f"{META_FILE} holds no optimiser state")
    except (FileNotFoundError, ValueError, safetensors_error()) as err:  # incl. JSON, UTF-8
        raise Ar2Error(
            f"{path}: damaged checkpoint ({type(err).__name__}: {str(err)[:120]}). Fix: delete "
            "that folder; --resume then restarts its stage from the beginning"
        ) from None
    for name, model in models.items():
        prefix = f"model/{name}/"
        model.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
    for name, stepper in steppers.items():
        prefix = f"optim/{name}/"
        flat = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        stepper.load_state(flat, meta["optim"][name])
    return meta


@dataclasses.dataclass
class StageLog:
    """A training stage's loss at every step and its wall-clock seconds so far.

    Checkpoints carry it (:meth:`as_json`), so a resumed stage's loss curve and time are whole.

    Example:
        >>> log = StageLog([0.5], 2.0)
        >>> StageLog.from_json(log.as_json()) == log
        True
    """

    losses: list[float] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def from_json(cls, data: Any) -> StageLog:
        """What :meth:`as_json` wrote (an empty log for ``None``: a checkpoint without one)."""
        if not isinstance(data, dict):
            return cls()
        return cls([float(x) for x in data.get("losses", [])], float(data.get("seconds", 0.0)))

    def as_json(self) -> dict[str, Any]:
        return {"losses": [round(x, 6) for x in self.losses], "seconds": round(self.seconds, 3)}


def run_steps(
    stage: str,
    total: int,
    step_fn: Callable[[int], dict[str, float]],
    checkpoint: Callable[[int], None],
    every: int,
    start: int = 0,
    log: StageLog | None = None,
) -> StageLog:
    """Call ``step_fn(step)`` for ``start <= step < total`` with a progress bar; checkpoint
    every ``every`` steps and at the end. Each step's ``"loss"`` and time are added to ``log``
    (the steps before ``start`` already in it), which is returned."""
    tqdm = require("tqdm").tqdm
    log = StageLog() if log is None else log
    quiet = not distributed.world().main  # one progress bar, not one per process
    with tqdm(total=total, initial=start, desc=stage, unit="step", disable=quiet) as bar:
        for step in range(start, total):
            began = time.perf_counter()
            values = step_fn(step)
            log.losses.append(values["loss"])
            bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()})
            bar.update(1)
            if (step + 1) % every == 0 or step + 1 == total:
                log.seconds += time.perf_counter() - began
                began = time.perf_counter()
                checkpoint(step + 1)
            log.seconds += time.perf_counter() - began
    return log


def seed_step(seed: int, stage: str, step: int) -> random.Random:
    """Seed torch for this step (dropout) and return the step's Python RNG."""
    rng = step_rng(seed, stage, step)
    require("torch").manual_seed(rng.getrandbits(63))
    return rng


HEADS = ("classifier", "centroids")
"""Top-level modules trained at a stage's ``head_lr``: the ranker's new classifier, and the
PQ centroids ``ar2 jpq`` trains beside the query tower."""


def _param_groups(model: Any, cfg: StageConfig) -> list[dict[str, Any]]:
    """AdamW groups: decay vs no decay (LayerNorm, bias), and the new head (:data:`HEADS`) at
    ``head_lr``."""
    groups: dict[tuple[bool, bool], list[Any]] = {}
    for name, param in model.named_parameters():
        key = (_no_decay(name), cfg.head_lr is not None and name.split(".")[0] in HEADS)
        groups.setdefault(key, []).append(param)
    return [
        {
            "params": params,
            "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            "lr": cfg.head_lr if head else cfg.lr,
        }
        for (no_decay, head), params in sorted(groups.items())
    ]


def _no_decay(name: str) -> bool:
    return name.endswith(".bias") or "LayerNorm" in name or "layer_norm" in name


def _flatten(state: dict[int, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    torch = require("torch")
    tensors, meta = {}, {}
    for pid, entries in state.items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                meta[f"{pid}.{key}"] = value
    return tensors, meta


def _unflatten(tensors: dict[str, Any], meta: dict[str, Any]) -> dict[int, dict[str, Any]]:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *meta.items()]:
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return state
