"""`ar2 train --set KEY=VALUE`: settings changed from the command line, checked like the TOML's,
and recorded in the run (so `--resume` tells a different `--set` from the same one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ar2.cli import _train_config, build_parser, main
from ar2.config import AR2Config, load_ar2_config
from ar2.errors import Ar2Error


def _config(*extra: str) -> AR2Config:
    """The config ``ar2 train data --preset toy --out o EXTRA`` would run."""
    return _train_config(build_parser().parse_args(["train", "data", "--out", "o", *extra]))


def _one_error_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``ar2 train`` with ``argv`` (toy preset, no data needed), expect exit 2 and one
    error line; return it."""
    code = main(["-q", "train", "no-data", "--preset", "toy", "--out", "no-run", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("ar2: error: ") and len(err.splitlines()) == 1, err
    return err


def test_set_changes_top_level_and_table_keys() -> None:
    toy = _config("--preset", "toy")
    settings = ["dev_queries=20", "g0.steps=80", "g0.lr=1e-5", "eval_measure=R@100",
                "index.factory=IVF4,Flat", 'retriever_model="some/path"']  # fmt: skip
    cfg = _config("--preset", "toy", *(arg for s in settings for arg in ("--set", s)))
    assert (cfg.dev_queries, cfg.g0.steps, cfg.g0.lr) == (20, 80, 1e-5)
    assert (cfg.eval_measure, cfg.index.factory) == ("R@100", "IVF4,Flat")
    assert cfg.retriever_model == "some/path"  # a quoted TOML string
    assert cfg.g0.batch_size == toy.g0.batch_size  # the rest of the table is the preset's
    assert cfg.rounds == toy.rounds and toy.dev_queries != 20 and toy.g0.steps != 80


def test_set_wins_over_the_file_and_model_and_the_last_set_wins() -> None:
    cfg = _config("--preset", "toy", "--model", "m", "--set", "ranker_model=r",
                  "--set", "rounds=5", "--set", "rounds=1")  # fmt: skip
    assert (cfg.retriever_model, cfg.ranker_model, cfg.rounds) == ("m", "r", 1)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("g0.stpes=5", "--set g0.stpes=5: unknown key 'stpes' in [g0]. Fix: did you mean 'steps'?"),
        ("dev_queriez=20", "unknown key 'dev_queriez'. Fix: did you mean 'dev_queries'?"),
        ("steps=80", "unknown key 'steps'. Fix: did you mean 'g0.steps'?"),
        ("retreiver.lr=1e-5", "unknown table 'retreiver'. Fix: did you mean 'retriever'?"),
    ],
)
def test_unknown_key_is_one_line_naming_the_closest_key(
    setting: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _one_error_line(capsys, "--set", setting)
    assert expected in err and "valid " in err


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("rounds=two", "--set rounds=two: rounds = 'two' is a string, not an integer"),
        ("g0=5", "--set g0=5: g0 is a table of settings, not one value"),
        ("g0.lr=fast", "--set g0.lr=fast: lr = 'fast' is a string, not a number"),
        ("in_batch=1", "--set in_batch=1: in_batch = 1 is an integer, not true or false"),
        ("rounds.x=1", "--set rounds.x=1: rounds is not a table"),
        ("rounds", "--set rounds: not KEY=VALUE"),
        ("dev_queries=0", "with --set dev_queries=0: dev_queries = 0 must be >= 1"),
    ],
)
def test_wrong_type_or_value_is_one_line_naming_the_set(
    setting: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _one_error_line(capsys, "--set", setting)
    assert expected in err and "Fix:" in err


def test_unknown_key_in_a_toml_file_names_the_closest_key() -> None:
    with pytest.raises(Ar2Error, match=r"my.toml \[g0\]: unknown key 'stpes'\. Fix: did you mean"
                       r" 'steps'\? \(valid keys: batch_size, "):  # fmt: skip
        load_ar2_config({"g0": {"stpes": 3}}, "my.toml")
    with pytest.raises(Ar2Error, match=r"unknown key 'roundz'\. Fix: did you mean 'rounds'\?"):
        load_ar2_config({"roundz": 3}, "my.toml")


def test_too_many_dev_queries_names_the_flag_that_lowers_them() -> None:
    from ar2.train.data import _hold_out
    from ar2.types import Query

    queries = [Query(f"q{i}", "text") for i in range(62)]
    with pytest.raises(Ar2Error, match=r"none of the 62 training.*--set dev_queries=N with N < 62"):
        _hold_out(queries, 100, seed=0)


class _Stop(Exception):
    """Raised in place of loading the data: the run stops once its config.json is written."""


@pytest.fixture
def stop_after_config(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    from ar2.train import ar2 as train_ar2

    def stop(*args: Any) -> None:
        raise _Stop

    monkeypatch.setattr(train_ar2, "load_train_data", stop)


def test_an_override_reaches_the_run_and_resume_checks_it(
    tiny_bert: Path, tmp_path: Path, stop_after_config: None,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from conftest import write_train_toy

    data, out = write_train_toy(tmp_path / "data"), tmp_path / "run"
    argv = ["-q", "train", str(data), "--preset", "toy", "--model", str(tiny_bert),
            "--out", str(out)]  # fmt: skip
    sets = ["--set", "dev_queries=3", "--set", "g0.steps=7"]
    with pytest.raises(_Stop):
        main([*argv, *sets])
    saved = json.loads((out / "config.json").read_text())
    assert (saved["dev_queries"], saved["g0"]["steps"]) == (3, 7)

    with pytest.raises(_Stop):  # the same --set: the same config, resumed
        main([*argv, *sets, "--resume"])
    assert main([*argv, *sets[:2], "--set", "g0.steps=8", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume with a different config (g0.steps)" in err and len(err.splitlines()) == 1
    assert main([*argv, "--resume"]) == 2  # without the --set: the preset's, another config
    assert "different config (dev_size, g0.steps)" in capsys.readouterr().err  # as it trains
