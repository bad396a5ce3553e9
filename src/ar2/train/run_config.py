"""A run's ``config.json``: the config it was started with (and the data it trains on), read
back with the defaults of fields added since, and compared on ``--resume`` and
``--warm-start``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ar2.config import STAGES, AR2Config, StageConfig
from ar2.errors import Ar2Error


def config_json(cfg: AR2Config) -> dict[str, Any]:
    """``cfg`` as the plain JSON a run stores in ``config.json``.

    Example:
        >>> config_json(AR2Config())["index"]["preset"]
        'flat'
    """
    return json.loads(json.dumps(cfg.__dict__, default=lambda o: o.__dict__))  # type: ignore[no-any-return]


def read_run_config(path: Path) -> dict[str, Any]:
    """A run's stored ``config.json``, with the defaults of the fields added since it was
    written, in tables too (a run from an older ar2 still resumes and warm-starts). The rule
    that makes this right: a new field's default is the behaviour from before it existed.

    Example:
        >>> _with_defaults({"g0": {"steps": 5}}, {"g0": {"steps": 1, "lr": 0.1}, "seed": 42})
        {'g0': {'steps': 5, 'lr': 0.1}, 'seed': 42}
    """
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:
        raise Ar2Error(
            f"{path}: not valid JSON ({err}), so the run cannot be checked or resumed. "
            "Fix: restore it from a copy, or start the run again with --overwrite"
        ) from None
    if not isinstance(saved, dict):
        raise Ar2Error(
            f"{path}: not a run's config (a JSON {type(saved).__name__}). "
            "Fix: restore it from a copy, or start the run again with --overwrite"
        )
    return _with_defaults(saved, config_json(AR2Config()))


def _with_defaults(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    merged = {
        k: _with_defaults(saved[k], v) if isinstance(v, dict) and isinstance(saved.get(k), dict)
        else saved.get(k, v)
        for k, v in defaults.items()
    }  # fmt: skip
    return merged | {k: v for k, v in saved.items() if k not in defaults}


def config_differences(
    saved: dict[str, Any], wanted: dict[str, Any], prefix: str = ""
) -> list[str]:
    """The keys (``table.key``) whose values differ between two stored configs.

    Example:
        >>> config_differences({"g0": {"lr": 1}, "seed": 1}, {"g0": {"lr": 2}, "seed": 1})
        ['g0.lr']
    """
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def effective(config: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    """``config`` as it trains on ``data_dir``: each stage's ``epochs`` resolved into its steps
    and the dev rule into the dev slice's size, its data record left out. Two configs that
    train alike compare equal, however they are written (a run from before ``epochs`` and
    ``dev_fraction`` against today's preset that gives the same steps and split).

    Example:
        >>> import pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "qrels").mkdir()
        >>> rows = "".join(f"q{i}\\td1\\t1\\n" for i in range(40))
        >>> _ = (d / "qrels" / "train.tsv").write_text("query-id\\tcorpus-id\\tscore\\n" + rows)
        >>> cfg = {"dev_queries": 100, "dev_fraction": 0.125,
        ...        "g0": {"steps": 150, "batch_size": 32, "epochs": 7}}
        >>> effective(cfg, d)
        {'g0': {'steps': 8, 'batch_size': 32}, 'dev_size': 5}
    """
    from ar2.train.data import dev_size, train_query_count

    out = {k: v for k, v in config.items() if k not in ("data", "dev_queries", "dev_fraction")}
    total, has_dev = train_query_count(data_dir)
    dev = 0 if has_dev else dev_size(total, config.get("dev_queries", 100),
                                     config.get("dev_fraction"))[0]  # fmt: skip
    for name in STAGES:
        stage = config.get(name)
        if isinstance(stage, dict) and stage.get("epochs") is not None:
            known = {k: v for k, v in stage.items() if k in StageConfig.__dataclass_fields__}
            steps = StageConfig(**known).steps_for(total - dev)
            out[name] = {k: v for k, v in stage.items() if k != "epochs"} | {"steps": steps}
        elif isinstance(stage, dict):
            out[name] = {k: v for k, v in stage.items() if k != "epochs"}
    return out | {"dev_size": dev}


def for_collection(cfg: AR2Config, queries: int) -> tuple[AR2Config, str]:
    """``cfg`` with each stage's steps for ``queries`` training queries
    (:meth:`StageConfig.steps_for`), and one line saying so, for the log and the report.

    Example:
        >>> cfg = AR2Config(g0=StageConfig(steps=150, batch_size=32, epochs=7))
        >>> for_collection(cfg, 35)[1]
        '35 training queries: g0 8 steps (7 epochs, at most 150); d0 100; ranker 50; retriever 100'
    """
    stages = {name: getattr(cfg, name) for name in STAGES}
    steps = {name: stage.steps_for(queries) for name, stage in stages.items()}
    planned = {name: dataclasses.replace(stages[name], steps=steps[name], epochs=None)
               for name in STAGES}  # fmt: skip
    parts = [
        f"{name} {steps[name]}" + ("" if stage.epochs is None else
                                   f" steps ({stage.epochs:g} epochs, at most {stage.steps})")
        for name, stage in stages.items()
    ]  # fmt: skip
    return dataclasses.replace(cfg, **planned), f"{queries} training queries: {'; '.join(parts)}"
