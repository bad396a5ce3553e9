"""Shared pieces of the training stages: the metrics log and one resumable training stage."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ar2 import distributed
from ar2._io import atomic_write_text
from ar2._optional import require
from ar2.config import AR2Config, StageConfig
from ar2.encoders import BiEncoder
from ar2.train.data import TrainData
from ar2.train.loop import (
    StageLog,
    Stepper,
    load_checkpoint,
    run_steps,
    save_checkpoint,
    seed_step,
)

log = logging.getLogger("ar2.train")


class MetricsLog:
    """``metrics.jsonl``: one line per stage, written once (a resumed run does not repeat it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records = [r for r in map(_parse, _lines(path)) if r is not None]
        self.seen = {r["stage"] for r in self.records}

    def write(self, record: dict[str, Any]) -> None:
        if record["stage"] in self.seen:
            return
        self.records.append(record | {"time": round(time.time(), 1)})
        self.seen.add(record["stage"])
        if not distributed.world().main:  # every rank keeps the records; rank 0 writes them
            return
        # rewritten whole and atomically: a kill never leaves half a line behind
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
        shown = {k: v for k, v in record.items() if k not in ("stage", "losses")}  # not 1000s
        log.info("%s: %s", record["stage"], shown)


@dataclass
class RunContext:
    """What every stage of a run reads: its folder, data, config and metrics log."""

    out: Path
    data: TrainData
    cfg: AR2Config
    metrics: MetricsLog


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "stage" in record else None


TOWERS = ("doc_model", "query_model")
"""A retriever's modules that data parallelism wraps (one wrapper when the towers are shared)."""


def model_of(encoder: BiEncoder) -> Any:
    """The trainable module of a retriever: one tower, or both when they are separate."""
    torch = require("torch")
    return (
        encoder.doc_model
        if encoder.shared
        else torch.nn.ModuleList([encoder.query_model, encoder.doc_model])
    )


class RunSettings(Protocol):
    """What a training stage reads of its run's config (:class:`~ar2.config.AR2Config`,
    :class:`~ar2.config.PretrainConfig`)."""

    @property
    def seed(self) -> int: ...
    @property
    def checkpoint_every(self) -> int: ...
    @property
    def attention_dropout(self) -> float | None: ...
    @property
    def fast_dropout(self) -> bool: ...
    @property
    def train_attention(self) -> str: ...


def for_training(module: Any, cfg: RunSettings, role: str = "retriever") -> Any:
    """``module`` (a ``role``: ``"retriever"`` or ``"ranker"``) with the run's dropout
    settings (:mod:`ar2.encoders.dropout`) and training attention kernel
    (:mod:`ar2.encoders.attention`), in place."""
    if cfg.train_attention != "torch":
        from ar2.encoders.attention import resolve, train_with

        device = str(next(module.parameters()).device)
        train_with(module, resolve(cfg.train_attention, device, role))
    if cfg.attention_dropout is None and not cfg.fast_dropout:
        return module
    from ar2.encoders.dropout import for_training as set_dropout

    return set_dropout(module, cfg.attention_dropout, cfg.fast_dropout)


def train_stage(
    out: Path,
    name: str,
    models: dict[str, Any],
    cfg: StageConfig,
    step_loss: Any,
    run: RunSettings,
) -> StageLog:
    """Train ``models`` (one Stepper each) for ``cfg.steps`` with a resumable checkpoint, with
    ``run``'s seed, dropout and checkpoint interval; returns every step's loss and the stage's
    time (a resumed stage's included)."""
    [(key, module)] = models.items()
    for_training(module, run, "ranker" if key == "ranker" else "retriever")
    seed, every = run.seed, run.checkpoint_every
    stepper = Stepper(module, cfg, cfg.steps)
    ckpt = out / "checkpoints" / name
    meta = load_checkpoint(ckpt, models, {key: stepper}) if ckpt.is_dir() else {"step": 0}
    log = resumed_log(meta.get("log"), meta["step"], name)
    module.train()

    def one(step: int) -> dict[str, float]:
        seed_step(seed, name, step)  # dropout masks; the batch seeds itself from the step
        return {"loss": stepper.step(step_loss(step))}

    def save(step: int) -> None:
        save_checkpoint(ckpt, models, {key: stepper}, {"step": step, "log": log.as_json()})

    return run_steps(name, cfg.steps, one, save, every, meta["step"], log)


def resumed_log(saved: Any, step: int, stage: str) -> StageLog:
    """The log a checkpoint at ``step`` carries; one from before logs were kept starts the
    curve at ``step`` (said once)."""
    log = StageLog.from_json(saved)
    if step and not log.losses:
        logging.getLogger("ar2.train").warning(
            "%s: its checkpoint (step %d) predates per-step losses; the loss curve and the "
            "stage's time start there", stage, step)  # fmt: skip
    return log


def stage_record(name: str, r: int, model: str, log: StageLog) -> dict[str, Any]:
    """A training stage's line in ``metrics.jsonl``: its tail loss, time and loss curve.

    Example:
        >>> stage_record("g0-train", 0, "retriever", StageLog([1.0, 0.5], 3.25))
        {'stage': 'g0-train', 'round': 0, 'model': 'retriever', 'loss': 0.75, 'steps': 2, \
'losses': [1.0, 0.5], 'seconds': 3.25}
    """
    curve = log.as_json()
    return {"stage": name, "round": r, "model": model, "loss": tail_mean(log.losses),
            "steps": len(log.losses)} | curve  # fmt: skip


def tail_mean(values: list[float], n: int = 20) -> float | None:
    tail = values[-n:]
    return round(sum(tail) / len(tail), 6) if tail else None
