"""A run's ``config.json``: the config it was started with (and the data it trains on), read
back with the defaults of fields added since, and compared on ``--resume`` and
``--warm-start``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ar2.config import AR2Config
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
