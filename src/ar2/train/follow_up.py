"""The recipes of ``ar2 train`` that end in another artifact than the run's dense retriever:
the run trains as the ``ar2`` recipe does, then a command made for finished runs continues
it into a folder of the run (``OUT/<name>/``), with that command's defaults and the run's
seed. ``--resume`` of the run resumes it too.

- ``repconc``: ``ar2 repconc`` (:mod:`ar2.train.repconc`): the index compressed to ``m``
  bytes a document, beside JPQ.
- ``sparse``: ``ar2 sparse`` (:mod:`ar2.train.sparse`): the inference-free learned sparse
  retriever and its index.

Other settings: run the command over the finished run, ``ar2 repconc OUT --out DIR --set ...``.

Example:
    >>> sorted(FOLLOW_UPS)
    ['repconc', 'sparse']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ar2.config import RepCONCConfig, SparseConfig
from ar2.errors import Ar2Error


@dataclasses.dataclass(frozen=True)
class FollowUp:
    """A command over a finished run: its settings class (made with the run's seed), the
    module and function that run it, ``run_x(run, out, cfg, resume=..., inside=...)``, and
    the system of its report that it delivers (in its ``per_query.tsv``)."""

    settings: Callable[..., Any]
    module: str
    function: str
    system: str


FOLLOW_UPS: dict[str, FollowUp] = {
    "repconc": FollowUp(RepCONCConfig, "ar2.train.repconc", "run_repconc", "repconc"),
    "sparse": FollowUp(SparseConfig, "ar2.train.sparse", "run_sparse", "sparse"),
}


def check(name: str, data_dir: Path) -> None:
    """Refuse, before the run trains, a follow-up that could not run over its output: the
    ``repconc`` follow-up needs 256 documents (8-bit codebooks), ``sparse`` its extra."""
    if name == "repconc":
        from ar2.data.beir import count_documents

        n = count_documents(data_dir / "corpus.jsonl")
        if n < 256:
            raise Ar2Error(
                f"{data_dir / 'corpus.jsonl'}: {n} documents; the repconc recipe compresses "
                "with 8-bit PQ, which needs at least 256. Fix: --recipe ar2 (a small "
                "collection fits uncompressed)"
            )
    if name == "sparse":
        from ar2._optional import require

        require("seismic", extra="sparse")


def run(name: str, out: Path, seed: int, into: Path | None = None) -> dict[str, Any]:
    """Run follow-up ``name`` over the finished run ``out`` into ``into`` (default
    ``out/name``, inside the run), resuming what is there; its report."""
    import importlib

    follow = FOLLOW_UPS[name]
    function = getattr(importlib.import_module(follow.module), follow.function)
    into = out / name if into is None else into
    inside = into.resolve().is_relative_to(out.resolve())
    report: dict[str, Any] = function(out, into, follow.settings(seed=seed), resume=True,
                                      inside=inside)  # fmt: skip
    return report
