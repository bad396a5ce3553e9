"""Start a run from the warm-ups of another: copy its G0 (and D0) when their settings match.

Ablations and sweeps over the adversarial rounds (λ, the retriever loss, refresh) share the
warm-ups; re-running G0 for each costs most of a CPU budget. ``ar2 train --warm-start BASE``
copies the stage outputs of ``BASE`` whose inputs are the same as the new run's:

- G0 (``g0/``, ``mined/bm25``, ``mined/round-0``, ``indexes/round-0``, ``dev_runs/round-0*``,
  ``dev_split.json``, and the start model's ``indexes/start`` if built) when every field in
  :data:`G0_FIELDS` matches;
- D0 (``d0/``) when, in addition, every field in :data:`D0_FIELDS` matches.

What was copied, from where, is written to ``warm_start.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ar2._io import atomic_write_json, atomic_write_text
from ar2.errors import Ar2Error
from ar2.train.data import data_differences
from ar2.train.run_config import effective, read_run_config

log = logging.getLogger(__name__)

G0_FIELDS = (
    "seed", "retriever_model", "query_max_length", "doc_max_length", "train_doc_max_length",
    "scale", "g0", "mine_k", "dev_size", "eval_measure", "index", "attention_dropout",
    "fast_dropout", "mine_rank_start", "mine_relative_margin",
)  # fmt: skip
D0_FIELDS = (
    "ranker_model", "ranker_from_g0", "ranker_max_length", "ranker_head", "d0", "skip_d0",
    "rerank_k", "tune_fusion",
)  # fmt: skip
G0_PATHS = (
    "dev_split.json", "g0", "mined/bm25", "mined/round-0", "indexes/round-0",
    "dev_runs/round-0.trec", "indexes/start",
)  # fmt: skip
D0_PATHS = ("d0", "dev_runs/round-0.fusion.json")


def check_warm_start(base: Path, wanted: dict[str, Any], data_dir: Path) -> list[str]:
    """What :func:`warm_start` would copy from ``base`` into a run of config ``wanted``.

    Raises :class:`Ar2Error` when ``base`` is not a run whose G0 finished, was trained on
    other data, or its G0 settings differ (naming the fields).
    """
    config = base / "config.json"
    if not config.is_file() or not (base / "mined" / "round-0").is_dir():
        raise Ar2Error(
            f"--warm-start {base}: not a run whose G0 and mining finished. "
            "Fix: point it at a run folder of `ar2 train` that got past round-0 mining"
        )
    have = read_run_config(config)
    if "data" in have and "data" in wanted and data_differences(have["data"], wanted["data"]):
        raise Ar2Error(
            f"--warm-start {base}: it was trained on other data ({have['data'].get('path')}). "
            "Fix: warm-start from a run on the same data, or train without --warm-start"
        )
    have, now = effective(have, data_dir), effective(wanted, data_dir)  # as they train
    differ = [k for k in G0_FIELDS if have.get(k) != now.get(k)]
    if differ:
        raise Ar2Error(
            f"--warm-start {base}: its G0 settings differ in {differ}. "
            "Fix: use the same values, or train without --warm-start"
        )
    paths = list(G0_PATHS)
    d0_same = all(have.get(k) == now.get(k) for k in D0_FIELDS)
    if d0_same and (base / "d0" / "ranker").is_dir():
        paths += D0_PATHS
    return [rel for rel in paths if (base / rel).exists()]


def warm_start(out: Path, base: Path, wanted: dict[str, Any], data_dir: Path) -> list[str]:
    """Copy ``base``'s matching warm-up stages into the new run ``out``; returns what was copied
    (see :func:`check_warm_start`)."""
    paths = check_warm_start(base, wanted, data_dir)
    for rel in paths:
        _copy(base / rel, out / rel)
    stages = {"g0-train", "dev-g-0"} | ({"d0-train", "dev-gd-0"} if "d0" in paths else set())
    _copy_metrics(base, out, stages)
    atomic_write_json(out / "warm_start.json", {"from": str(base.resolve()), "copied": paths})
    log.info("warm start from %s: %s", base, ", ".join(paths))
    return paths


def _copy_metrics(base: Path, out: Path, stages: set[str]) -> None:
    """Start ``out``'s metrics log with the copied stages' records."""
    target = out / "metrics.jsonl"
    if target.exists() or not (base / "metrics.jsonl").is_file():
        return
    lines = (base / "metrics.jsonl").read_text().splitlines()
    kept = [x for x in lines if x and json.loads(x).get("stage") in stages]
    atomic_write_text(target, "".join(x + "\n" for x in kept))


def _copy(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp-copy")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        shutil.copy2(src, tmp)
    tmp.rename(dst)
