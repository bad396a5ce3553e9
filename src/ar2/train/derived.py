"""Outputs made from a finished ``ar2 train`` run (``ar2 distill-query``, ``ar2 jpq``): the
run is checked, the output folder claimed, and its settings recorded with a hash of the run's
retriever, so that a resume with other settings, or over a retrained run, is refused."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ar2._io import atomic_write_json
from ar2._outdir import KINDS, changed_settings, claim, clear_folder, resumed_record
from ar2.errors import Ar2Error


@contextlib.contextmanager
def derived_output(
    run: Path, out: Path, kind: str, record_file: str, cfg: Any, resume: bool, overwrite: bool,
    inside: bool = False,
) -> Iterator[tuple[Path, Path]]:  # fmt: skip
    """Hold ``out`` (an output of ``kind``, :data:`ar2._outdir.KINDS`) for work on ``run``;
    yields the output folder and the run's data folder. ``record_file`` keeps the settings
    ``cfg`` (a dataclass), the run and its retriever's hash. ``inside``: ``out`` is a folder
    of the run, which ``ar2 train`` holds (:mod:`ar2.train.follow_up`); otherwise an ``out``
    inside the run is refused, as any inside an input."""
    if resume and overwrite:
        raise Ar2Error("--resume and --overwrite together. Fix: pass one of them")
    if not (run / "retriever").is_dir() or not (run / "index" / "manifest.json").is_file():
        raise Ar2Error(
            f"{run}: not a finished ar2 train run (no retriever/ and index/). "
            f"Fix: give a run folder, or finish it with `ar2 train DATA --out {run} --resume`"
        )
    data_dir = Path(json.loads((run / "config.json").read_text())["data"]["path"])
    with claim(out, kind, [data_dir] if inside else [run, data_dir], overwrite) as held:
        record = {"config": dataclasses.asdict(cfg), "run": str(run.resolve()),
                  "retriever": fingerprint(run / "retriever")}  # fmt: skip
        defaults = dataclasses.asdict(type(cfg)())  # settings added since the output began
        _check_resume(held, record_file, kind, record, resume, overwrite, defaults)
        if overwrite:
            clear_folder(held)
        atomic_write_json(held / record_file, record)
        yield held, data_dir


def _check_resume(
    out: Path, record_file: str, kind: str, record: dict[str, Any], resume: bool, overwrite: bool,
    defaults: dict[str, Any],
) -> None:  # fmt: skip
    """Refuse to start over such an output, or to resume one of other settings or run; a
    setting its record lacks (added since) counts as its default of ``defaults``."""
    have = resumed_record(out, record_file, KINDS[kind][0], resume, overwrite)
    if have is None:
        return
    have = have | {"config": defaults | have.get("config", {})}
    if have == record:
        return
    differ = changed_settings(have["config"], record["config"])
    named = ", ".join(differ) or f"the run's retriever ({have.get('run')})"
    raise Ar2Error(
        f"{out}: --resume with other settings ({named}). Fix: resume with the settings "
        f"of its {record_file}, --overwrite to start again, or a new --out"
    )


def run_splits(run: Path, data_dir: Path) -> dict[str, dict[str, dict[str, int]]]:
    """The qrels an output made from ``run`` is measured on: the run's dev split, and the
    collection's test split where it has one."""
    from ar2.data.beir import load_qrels
    from ar2.train.data import dev_split_qrels

    splits = {"dev": dev_split_qrels(data_dir, json.loads((run / "dev_split.json").read_text()))}
    if (data_dir / "qrels" / "test.tsv").is_file():
        splits["test"] = load_qrels(data_dir / "qrels" / "test.tsv")
    return splits


def fingerprint(folder: Path) -> str:
    """A hash of the model weights in ``folder`` (its query tower's included): an output made
    from a run's model refuses to resume over a retrained one."""
    digest = hashlib.sha256()
    for file in sorted(folder.rglob("*.safetensors")):
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
