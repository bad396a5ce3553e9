"""Checkpoint averaging (JaColBERTv2.5, Clavié 2024): the delivered retriever is the uniform
average of the weights of the last rounds' retrievers, indexed and measured on dev."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ar2 import distributed
from ar2.encoders import BiEncoder

if TYPE_CHECKING:
    from ar2.train.stage import RunContext

INDEX = "averaged"
"""The averaged retriever's index folder under ``indexes/`` (its model: ``averaged/retriever``)."""


def averaged_rounds(chosen: int, n: int) -> list[int]:
    """The rounds averaged: the last ``n`` up to ``chosen`` (round 0 is G0).

    Example:
        >>> averaged_rounds(3, 2), averaged_rounds(1, 4), averaged_rounds(2, 1)
        ([2, 3], [0, 1], [2])
    """
    return list(range(max(0, chosen - n + 1), chosen + 1))


def average_state(models: Sequence[Any]) -> dict[str, Any]:
    """The uniform mean of the models' floating-point weights (buffers of other types, such
    as position ids, from the first model)."""
    states = [m.state_dict() for m in models]
    return {
        name: sum(s[name] for s in states) / len(states) if value.is_floating_point() else value
        for name, value in states[0].items()
    }


def retriever_of_round(out: Path, r: int) -> Path:
    """Round ``r``'s saved retriever (round 0: G0)."""
    return out / "g0" / "retriever" if r == 0 else out / "rounds" / str(r) / "retriever"


def average_encoders(encoders: Sequence[BiEncoder]) -> BiEncoder:
    """The last of ``encoders``, its weights replaced in place by the mean of all of theirs;
    it has separate towers when any of them has (a shared one counts as both)."""
    merged = encoders[-1]
    towers = ["doc_model"] if all(e.shared for e in encoders) else ["doc_model", "query_model"]
    if len(towers) == 2:
        merged.untie()
    for tower in towers:
        getattr(merged, tower).load_state_dict(average_state([getattr(e, tower) for e in encoders]))
    return merged


def averaged_retriever(ctx: RunContext, chosen: int) -> BiEncoder | None:
    """The average of the retrievers of :func:`averaged_rounds`, saved to
    ``averaged/retriever`` and indexed (``indexes/averaged``), with its dev G written as
    ``dev-avg``; ``None`` when there is one round to average (nothing to do)."""
    rounds = averaged_rounds(chosen, ctx.cfg.average_rounds)
    if len(rounds) == 1:
        return None
    final = ctx.out / INDEX / "retriever"
    if not final.is_dir():  # averaged once, on rank 0
        paths = [retriever_of_round(ctx.out, r) for r in rounds]
        distributed.on_main(
            lambda: average_encoders([BiEncoder.load(p) for p in paths]).save(final)
        )
    averaged = BiEncoder.load(final)
    _measure(ctx, averaged, rounds)
    return averaged


def _measure(ctx: RunContext, retriever: BiEncoder, rounds: list[int]) -> None:
    """Index the averaged retriever and write its dev G (once: a resumed run keeps both)."""
    from ar2.retrievers import dense
    from ar2.train.rounds import dev_retrieval, refresh_index

    if "dev-avg" in ctx.metrics.seen:
        return
    began = time.perf_counter()
    _, dev = dev_retrieval(ctx, dense(retriever, refresh_index(ctx, INDEX, retriever)))
    seconds = round(time.perf_counter() - began, 2)
    ctx.metrics.write({"stage": "dev-avg", "round": rounds[-1], "rounds": rounds, "dev": dev,
                       "seconds": seconds})  # fmt: skip
