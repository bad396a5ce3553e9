"""Data parallelism with torch.distributed: the process group, batch shards, gathers, DDP.

Under ``torchrun --nproc_per_node N`` every process draws the same global batch (a pure function
of seed, stage and step), keeps its own contiguous shard (:func:`shard`), and runs the models
wrapped in ``DistributedDataParallel`` (:func:`data_parallel`), which averages gradients over
the processes. In-batch negatives come from every process: :func:`gather` concatenates the
shards' document vectors and lets gradients flow back to the process that made them. With
equal shards the step is the same as one process on the global batch: the mean of the
processes' losses is the global loss, and the averaged gradients are its gradients (tested in
``tests/test_distributed.py``). Backend: nccl on CUDA, gloo on CPU.

Without torchrun (``WORLD_SIZE`` unset or 1) everything here is a no-op:

Example:
    >>> w = world()
    >>> (w.rank, w.size, w.main)
    (0, 1, True)
    >>> shard(["a", "b", "c", "d"], w)
    ['a', 'b', 'c', 'd']
"""

from __future__ import annotations

import gc
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from ar2._optional import require
from ar2.errors import Ar2Error

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes artifacts and logs."""
        return self.rank == 0


def world() -> World:
    """The current process group's rank and size, or rank 0 of 1 without one."""
    if not _initialized():
        return World()
    dist = require("torch").distributed
    return World(dist.get_rank(), dist.get_world_size())


TIMEOUT_ENV = "AR2_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 360.0
"""How long the other ranks wait while rank 0 alone works (:func:`on_main`: a refresh's index
build, the final report), which takes hours on a large corpus; torch's default timeout (10 to
30 minutes) would end the run. Every other collective keeps torch's default, so a lost rank
still stops the others soon."""

_waiting_group: Any = None  # a gloo group with the long timeout, for on_main's barriers


def init_from_env() -> World:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``, ``LOCAL_RANK``): nccl when CUDA is available, gloo otherwise."""
    global _waiting_group
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    timeout = _timeout()  # a bad setting fails before any group exists
    torch = require("torch")
    if not torch.distributed.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    if _waiting_group is None:
        _waiting_group = torch.distributed.new_group(backend="gloo", timeout=timeout)
    return world()


def _timeout() -> timedelta:
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_MIN))
    try:
        minutes = float(value)
    except ValueError:
        minutes = math.nan
    if not (math.isfinite(minutes) and 0 < minutes < 1e7):
        raise Ar2Error(f"{TIMEOUT_ENV}={value!r}: expected minutes > 0, e.g. {TIMEOUT_ENV}=720")
    return timedelta(minutes=minutes)


def finish(clean: bool = True) -> None:
    """Leave the process group: all ranks together when ``clean``; at once after an error
    (the other ranks then fail at their next collective instead of waiting forever)."""
    global _waiting_group
    _waiting_group = None
    if _initialized():
        gc.collect()  # drop DDP reducers and autograd graphs before the group goes
        dist = require("torch").distributed
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def barrier(patient: bool = False) -> None:
    """Wait for every rank (no-op on one process); ``patient``: for as long as
    ``AR2_DIST_TIMEOUT_MIN`` allows (rank 0 working alone)."""
    if world().size > 1:
        group = _waiting_group if patient else None
        require("torch").distributed.barrier(group=group)


def on_main(func: Callable[..., T], *args: Any) -> T | None:
    """Run ``func(*args)`` on rank 0 only (what writes files) between two barriers: every rank
    has made its decisions on the files as they were ("skip this stage if its output exists")
    before rank 0 writes, and what it wrote is there for all of them afterwards."""
    barrier()
    result = func(*args) if world().main else None
    barrier(patient=True)
    return result


def decide_on_main(func: Callable[..., T], *args: Any) -> T:
    """Run ``func(*args)`` on rank 0 only (checks, reads of shared files) and give every rank
    its result, or raise its :class:`Ar2Error` on every rank: one decision and one message,
    and no rank left waiting at a barrier for one that stopped."""
    outcome: list[Any] = [None, None]
    if world().main:
        try:
            outcome = [func(*args), None]
        except Ar2Error as err:
            outcome = [None, str(err)]
    if world().size > 1:  # patient: rank 0 may be hashing a large corpus
        require("torch").distributed.broadcast_object_list(outcome, src=0, group=_waiting_group)
    if outcome[1] is not None:
        raise Ar2Error(outcome[1])
    return outcome[0]  # type: ignore[no-any-return]


def encode_to_parts(
    encode_to: Callable[[Path, Sequence[T]], Any], items: Sequence[T], folder: Path
) -> list[Path]:
    """Each rank runs ``encode_to(path, share)`` on its contiguous share of ``items`` (rank
    ``r``'s rows follow rank ``r - 1``'s), writing ``folder/part-r.npy``; returns every rank's
    path in order, once all are written. ``folder`` must be shared by the ranks (as ``--out``).
    """
    w, n = world(), len(items)
    paths = [folder / f"part-{rank:05d}.npy" for rank in range(w.size)]
    share = items[w.rank * n // w.size : (w.rank + 1) * n // w.size]  # sizes differ by <= 1
    encode_to(paths[w.rank], share)
    barrier(patient=True)  # shares of long texts may take hours longer than others
    return paths


def map_sharded(func: Callable[[Sequence[T]], list[Any]], items: Sequence[T]) -> list[Any]:
    """``func(items)`` with the work split over the ranks: rank ``r`` runs ``func`` on items
    ``r, r + W, ...``; every rank gets the concatenated results, rank 0's first. ``func`` must
    return plain data (it crosses processes with ``all_gather_object``)."""
    w = world()
    return gather_objects(func(items[w.rank :: w.size]))


def gather_objects(items: list[Any]) -> list[Any]:
    """Every rank's list of plain data concatenated, in rank order (``all_gather_object``):
    a collective, which every rank calls at the same point."""
    w = world()
    if w.size == 1:
        return items
    parts: list[Any] = [None] * w.size
    require("torch").distributed.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def shard(items: Sequence[T], w: World | None = None) -> list[T]:
    """This rank's contiguous slice of a global batch (every rank gets the same number).

    Example:
        >>> shard([1, 2, 3, 4], World(rank=1, size=2))
        [3, 4]
    """
    w = w or world()
    if len(items) % w.size:
        raise Ar2Error(
            f"a batch of {len(items)} does not split into {w.size} equal shards. "
            f"Fix: make batch_size a multiple of the number of processes ({w.size})"
        )
    per = len(items) // w.size
    return list(items[w.rank * per : (w.rank + 1) * per])


def gather(tensor: Any) -> Any:
    """Every rank's ``tensor`` concatenated along dim 0, in rank order. Gradients flow back to
    the rank that made each part (their sum over the ranks that used it)."""
    w = world()
    if w.size == 1:
        return tensor
    torch = require("torch")
    with warnings.catch_warnings():  # deprecated in favour of a private API; still correct
        warnings.simplefilter("ignore", FutureWarning)
        parts = torch.distributed.nn.functional.all_gather(tensor)
    return torch.cat(parts, dim=0)


def all_mean(value: float) -> float:
    """The mean of a float over the ranks (for logging a loss)."""
    w = world()
    if w.size == 1:
        return value
    torch = require("torch")
    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t.item()) / w.size


@contextmanager
def data_parallel(owner: Any, attrs: Sequence[str]) -> Iterator[None]:
    """While the block runs, ``owner.<attr>`` are ``DistributedDataParallel`` wrappers of
    themselves (the same wrapper where two attributes are one module, as shared towers), so
    every forward through ``owner`` is synchronised; restored afterwards. No-op on one process.

    ``find_unused_parameters``: BERT's pooler, for one, gets no gradient from mean pooling.
    """
    if world().size == 1:
        yield
        return
    torch = require("torch")
    originals = {a: getattr(owner, a) for a in attrs}
    wrapped: dict[int, Any] = {}
    for attr, module in originals.items():
        if id(module) not in wrapped:
            wrapped[id(module)] = torch.nn.parallel.DistributedDataParallel(
                module, find_unused_parameters=True
            )
        setattr(owner, attr, wrapped[id(module)])
    try:
        yield
    finally:
        for attr, module in originals.items():
            setattr(owner, attr, module)
        wrapped.clear()
        gc.collect()


def _initialized() -> bool:
    """A process group exists (never true before torch is imported: no import here)."""
    import sys

    if "torch" not in sys.modules:
        return False
    dist = require("torch").distributed
    return bool(dist.is_available() and dist.is_initialized())
