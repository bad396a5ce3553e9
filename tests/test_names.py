"""One source for each name table (issue 12, item 8): the names live in `ar2.config` (light
enough for the CLI) and `ar2.retrievers.KINDS`; the CLI's choices, the config's checks and the
registries of implementations must agree with them."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from ar2 import config
from ar2.cli import build_parser


def _choices(command: str, flag: str) -> tuple[str, ...]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if flag in a.option_strings)
    return tuple(action.choices or ())


def test_the_registries_are_keyed_by_the_configs_names() -> None:
    pytest.importorskip("torch")
    from ar2 import index, losses
    from ar2.encoders.pooling import POOLERS
    from ar2.index.factory import PRESETS

    assert tuple(POOLERS) == config.POOLINGS
    assert tuple(losses.ADV_REDUCTIONS) == config.ADV_REDUCTIONS
    assert tuple(losses.KD_LOSSES) == config.KD_LOSSES
    from ar2.fusion import NORMS

    assert tuple(NORMS) == config.TEACHER_NORMS
    from ar2.encoders.cross_encoder import HEADS

    assert tuple(HEADS) == config.RANKER_HEADS
    assert (*PRESETS, "auto") == config.INDEX_PRESETS
    assert tuple(index.KINDS) == config.INDEX_KINDS
    from ar2.index.factory import QUANTIZERS

    assert tuple(QUANTIZERS) == config.INDEX_QUANTIZERS == tuple(config.QUANTIZABLE)


def test_the_cli_offers_exactly_the_configs_names() -> None:
    assert _choices("index", "--kind") == config.INDEX_KINDS
    assert _choices("index", "--preset") == config.INDEX_PRESETS
    assert _choices("eval", "--preset") == config.INDEX_PRESETS
    for command in ("index", "eval"):
        assert _choices(command, "--precision") == config.PRECISIONS
    assert _choices("index", "--quantize") == config.INDEX_QUANTIZERS
    for command in ("search", "serve"):
        assert _choices(command, "--backend") == config.BACKENDS
    assert _choices("train", "--recipe") == config.RECIPES


def test_every_name_is_accepted_where_it_is_checked_and_others_are_not() -> None:
    from ar2.errors import Ar2Error

    checked: list[tuple[Any, str, tuple[str, ...]]] = [
        (config.EncoderConfig, "pooling", config.POOLINGS),
        (config.RankerConfig, "precision", config.PRECISIONS),
        (config.AR2Config, "adv_reduction", config.ADV_REDUCTIONS),
        (config.AR2Config, "retriever_loss", config.RETRIEVER_LOSSES),
        (config.AR2Config, "kd_loss", config.KD_LOSSES),
        (config.TeacherConfig, "kind", config.TEACHERS),
        (config.TeacherConfig, "norm", config.TEACHER_NORMS),
        (config.RankerConfig, "head", config.RANKER_HEADS),
        (config.AR2Config, "ranker_head", config.RANKER_HEADS),
        (config.PretrainConfig, "ranker_head", config.RANKER_HEADS),
    ]
    for make, field, names in checked:
        for name in names:
            assert getattr(make(**{field: name}), field) == name
        with pytest.raises((ValueError, Ar2Error)):
            make(**{field: "no-such-name"})


def test_serve_modes_systems_and_help_are_the_retriever_kinds() -> None:
    from ar2.retrievers import KINDS, parse_spec
    from ar2.serve import MODES

    assert MODES == tuple(KINDS)
    assert [parse_spec(k)[0] for k in KINDS] == list(KINDS)
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    systems = next(a for a in sub.choices["eval"]._actions if "--systems" in a.option_strings)
    assert all(kind in (systems.help or "") for kind in KINDS)


def test_every_precision_resolves_on_this_machine() -> None:
    pytest.importorskip("torch")
    from ar2.encoders._runtime import use_bf16

    assert {
        name: isinstance(use_bf16(name, "cpu"), bool) for name in config.PRECISIONS
    } == dict.fromkeys(config.PRECISIONS, True)
