"""The adversarial rounds (spec §5.2): refresh + mine → ranker steps → retriever steps → eval.

Both models keep one optimiser and one linear schedule across all rounds (spec §5.3), held in a
rolling checkpoint ``checkpoints/ar2`` whose position ``(round, phase, step)`` tells a resumed run
where to continue.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ar2 import distributed
from ar2._io import atomic_write_json
from ar2._optional import require
from ar2.data.training import TrainingGroup, read_groups
from ar2.data.trec import read_run, write_run
from ar2.encoders import BiEncoder, CrossEncoder
from ar2.train import steps, tas
from ar2.train.loop import (
    StageLog,
    Stepper,
    load_checkpoint,
    run_steps,
    save_checkpoint,
    seed_step,
)
from ar2.train.stage import (
    TOWERS,
    RunContext,
    for_training,
    model_of,
    resumed_log,
    stage_record,
)
from ar2.train.teacher import Teacher
from ar2.train.teacher import for_round as teacher_for_round
from ar2.types import Doc, Hit, Query, Run

if TYPE_CHECKING:
    from ar2.index import FaissIndex

PHASES = ("ranker", "retriever")
T = TypeVar("T")


def mine_round(ctx: RunContext, r: int, retriever: BiEncoder, ranker: CrossEncoder | None) -> None:
    """Refresh the index with ``retriever``, mine round ``r``'s groups, evaluate on dev.

    When the training queries carry answers, answer-bearing candidates are dropped from the
    negatives and counted in the groups' manifest (:func:`ar2.mining.write_mined`)."""
    from ar2.mining import answer_check, false_negative_filter, mine, write_mined
    from ar2.retrievers import dense as dense_retriever

    out, data, cfg, metrics = ctx.out, ctx.data, ctx.cfg, ctx.metrics
    folder = out / "mined" / f"round-{r}"
    if folder.is_dir():
        return
    began = time.perf_counter()
    index = refresh_index(ctx, r, retriever)
    dense = dense_retriever(retriever, index)
    is_answer = answer_check(data.train, data.docs)  # QA data: answer-bearing docs are no negatives
    flt = false_negative_filter(cfg.mine_rank_start, cfg.mine_relative_margin, dense, data.docs)

    def mine_share(queries: Sequence[Query]) -> dict[str, TrainingGroup]:  # a rank's queries
        mined = mine(dense, queries, data.train_qrels, cfg.mine_k, is_answer, flt)
        return {g.query.id: g for g in mined}

    groups = list(split_queries(mine_share, data.train).values())  # in the single-process order
    dev_run, dev = dev_retrieval(ctx, dense)
    distributed.on_main(write_run, dev_run, out / "dev_runs" / f"round-{r}.trec")
    seconds = round(time.perf_counter() - began, 2)  # index refresh, mining and dev retrieval
    metrics.write({"stage": f"dev-g-{r}", "round": r, "dev": dev, "groups": len(groups),
                   "seconds": seconds})  # fmt: skip
    if ranker is not None:
        dev_rerank(ctx, r, ranker)
    source = "g0/retriever" if r == 0 else f"rounds/{r}/retriever"
    provenance = {"round": r, "k": cfg.mine_k, "n": cfg.retriever.n_neg, "checkpoint": source}

    # marks the round as mined
    distributed.on_main(write_mined, folder, groups, provenance, is_answer is not None, flt)


def dev_retrieval(ctx: RunContext, dense: Any) -> tuple[Run, dict[str, float]]:
    """The dev queries' top 100 from the ``dense`` retriever, and their G (``eval_measure``)."""
    from ar2.evaluate import evaluate

    run = split_queries(lambda queries: dense.retrieve(queries, 100), ctx.data.dev)
    measure = ctx.cfg.eval_measure
    return run, {"G": evaluate(run, ctx.data.dev_qrels, [measure])[measure]}


def refresh_index(ctx: RunContext, r: int | str, retriever: BiEncoder) -> FaissIndex:
    """Round ``r``'s index (``indexes/round-R``, or ``indexes/R`` when ``r`` is a name such as
    ``"averaged"``; spec §4.1 steps 1-2): each rank encodes its share of the corpus to
    a ``.npy`` file, rank 0 builds the index from the files and saves it, and every rank maps
    the saved index (one copy in memory per machine, however many ranks it runs). An index
    already saved (a run killed before its mining ended) is the same retriever's: kept.

    As the original code, one index on rank 0; unlike it, no pickles, and the vectors go
    through disk rather than memory (they are read a chunk at a time).
    """
    from ar2.index import FaissIndex

    corpus, main = ctx.data.corpus, distributed.world().main
    folder = ctx.out / "indexes"
    name = r if isinstance(r, str) else f"round-{r}"
    path, parts_dir = folder / name, folder / f".{name}.parts"
    saved = path.is_dir()  # written atomically: every rank sees it whole or not at all
    distributed.on_main(_remove_leftovers, folder, f".{name}.")
    if not saved:
        parts_dir.mkdir(parents=True, exist_ok=True)

        def encode_to(file: Path, docs: Sequence[Doc]) -> None:
            retriever.encode_docs_to(file, docs, len(docs), progress=main)

        parts = distributed.encode_to_parts(encode_to, corpus, parts_dir)

        def build() -> None:
            with _every_core():
                index = FaissIndex.build_from_npy(parts, [d.id for d in corpus], ctx.cfg.index)
            index.save(path, {"encoder": retriever.describe()})
            shutil.rmtree(parts_dir)

        distributed.on_main(build)
    return FaissIndex.load(path, mmap=True)


def _remove_leftovers(folder: Path, prefix: str) -> None:
    """What a killed refresh left in ``folder``: its parts, a half-saved index (``prefix*``)."""
    for leftover in folder.glob(f"{prefix}*"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()


@contextmanager
def _every_core() -> Iterator[None]:
    """FAISS on every core this process may use while the other ranks wait for it (torchrun
    gives each process one OpenMP thread on CPU); unchanged on one process."""
    faiss = require("faiss")
    before = faiss.omp_get_max_threads()
    if distributed.world().size > 1:
        faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def dev_rerank(ctx: RunContext, r: int, ranker: CrossEncoder, name: str | None = None) -> None:
    """Rerank round ``r``'s dev run with ``ranker``, tune the fusion weight, log G+D and D.

    The weight (:mod:`ar2.fusion`) goes to ``dev_runs/round-R.fusion.json``; ``D`` is the
    ranker's order alone (``w = 1``), as in AR2's own reranking. ``name``: another retriever's
    dev run of round ``r``, ``dev_runs/NAME.trec`` (stage ``dev-gd-NAME``).
    """
    from ar2.fusion import WEIGHTS, tune_weight

    data, cfg, began = ctx.data, ctx.cfg, time.perf_counter()
    file = name or f"round-{r}"
    run = read_run(ctx.out / "dev_runs" / f"{file}.trec")

    def score(queries: Sequence[Query]) -> dict[str, tuple[list[Hit], Any]]:
        return score_heads(run, queries, ranker, data.docs, cfg.rerank_k, f"dev rerank {r}")

    scored = split_queries(score, data.dev)
    weights = WEIGHTS if cfg.tune_fusion else (1.0,)
    best, values = tune_weight(scored, run, data.dev_qrels, cfg.eval_measure, weights)
    record = {"weight": best, cfg.eval_measure: {str(w): v for w, v in values.items()}}
    distributed.on_main(atomic_write_json, ctx.out / "dev_runs" / f"{file}.fusion.json", record)
    dev = {"G+D": values[best], "D": values[1.0]}
    seconds = round(time.perf_counter() - began, 2)
    ctx.metrics.write({"stage": f"dev-gd-{name or r}", "round": r, "dev": dev,
                       "fusion_weight": best, "seconds": seconds})  # fmt: skip


def score_heads(
    run: Run,
    queries: Sequence[Query],
    ranker: CrossEncoder,
    docs: Mapping[str, Doc],
    k: int,
    desc: str = "scoring",
) -> dict[str, tuple[list[Hit], Any]]:
    """Each query's top ``k`` hits of ``run`` with the ranker's scores for them, scored once
    so that every fusion weight can be tried (:func:`ar2.fusion.tune_weight`)."""
    tqdm = require("tqdm").tqdm
    scored = {}
    for q in tqdm(queries, desc=desc, unit="query", disable=not distributed.world().main):
        hits = run.get(q.id, [])[:k]
        scored[q.id] = (hits, ranker.score(q.text, [docs[h.doc_id] for h in hits]))
    return scored


def split_queries(
    func: Callable[[Sequence[Query]], dict[str, T]], queries: Sequence[Query]
) -> dict[str, T]:
    """``func(queries)`` (a dict keyed by query id, in query order), each rank running it on
    its share of the queries."""
    merged = dict(distributed.map_sharded(lambda share: list(func(share).items()), queries))
    return {q.id: merged[q.id] for q in queries if q.id in merged}


def fusion_weight(out: Path, r: int, name: str | None = None) -> float:
    """The fusion weight tuned on dev for round ``r`` (``name``: for that dev run)."""
    file = out / "dev_runs" / f"{name or f'round-{r}'}.fusion.json"
    return float(json.loads(file.read_text())["weight"])


def adversarial_rounds(
    ctx: RunContext, retriever: BiEncoder, ranker: CrossEncoder
) -> tuple[BiEncoder, CrossEncoder]:
    """Run ``cfg.rounds`` rounds; returns the final retriever and ranker."""
    cfg = ctx.cfg
    models = {"retriever": model_of(retriever), "ranker": ranker.model}
    for role, module in models.items():
        for_training(module, cfg, role)
    steppers = {
        "retriever": Stepper(models["retriever"], cfg.retriever, cfg.rounds * cfg.retriever.steps),
        "ranker": Stepper(models["ranker"], cfg.ranker, cfg.rounds * cfg.ranker.steps),
    }
    ckpt = ctx.out / "checkpoints" / "ar2"
    meta = load_checkpoint(ckpt, models, steppers) if ckpt.is_dir() else {"pos": (1, 0, 0)}
    pos = tuple(meta["pos"])

    def save(position: list[int], log: StageLog) -> None:
        save_checkpoint(ckpt, models, steppers, {"pos": position, "log": log.as_json()})

    for r in range(1, cfg.rounds + 1):
        groups = read_groups(ctx.out / "mined" / f"round-{r - 1 if cfg.refresh else 0}")
        for phase, name in enumerate(PHASES):
            if (r, phase) < pos[:2] or getattr(cfg, name).steps == 0:
                continue
            resumed = (r, phase) == pos[:2]
            start = pos[2] if resumed else 0
            log = resumed_log(meta.get("log"), start, f"round-{r}-{name}") if resumed else None
            phase_run = _Phase(ctx, (r, phase), groups, (retriever, ranker), steppers[name])
            if name == "retriever" and cfg.retriever_loss == "ar2":
                phase_run.teacher = teacher_for_round(ctx, r, ranker)
            log = phase_run.run(start, save, log)
            ctx.metrics.write(stage_record(f"round-{r}-{name}", r, name, log))
        _finish_round(ctx, r, retriever, ranker)
    return retriever, ranker


def _finish_round(ctx: RunContext, r: int, retriever: BiEncoder, ranker: CrossEncoder) -> None:
    folder = ctx.out / "rounds" / str(r)
    if not (folder / "ranker").is_dir():

        def write() -> None:
            retriever.save(folder / "retriever")
            ranker.save(folder / "ranker")

        distributed.on_main(write)
    mine_round(ctx, r, retriever, ranker)


class _Phase:
    """One model's steps in one round: the ranker (listwise CE) or the retriever (AR2 loss)."""

    def __init__(
        self,
        ctx: RunContext,
        position: tuple[int, int],
        groups: list[TrainingGroup],
        models: tuple[BiEncoder, CrossEncoder],
        stepper: Stepper,
    ) -> None:
        self.ctx, (self.r, self.phase), self.groups = ctx, position, groups
        (self.retriever, self.ranker), self.stepper = models, stepper
        self.name = PHASES[self.phase]
        self.stage_cfg = ctx.cfg.ranker if self.name == "ranker" else ctx.cfg.retriever
        self.teacher: Teacher | None = None  # the retriever's, for the AR2 loss

    def _tas(self) -> bool:
        sampling = self.ctx.cfg.sampling
        return sampling.topic_batches or sampling.balanced_margins

    def _topics(self) -> list[list[int]] | None:
        """TAS-B's topics of the training queries, for the retriever's steps, if asked."""
        if self.name != "retriever" or not self.ctx.cfg.sampling.topic_batches:
            return None
        return tas.topics_for_round(self.ctx.out, self.r, self.groups, self.retriever, self.ctx.cfg)

    def run(self, start: int, save: Any, log: StageLog | None = None) -> StageLog:
        """Steps ``start..steps`` (``log`` holds the steps before ``start``);
        ``save([round, phase, step], log)`` checkpoints the position."""
        log = StageLog() if log is None else log
        stage, cfg = f"round-{self.r}-{self.name}", self.ctx.cfg
        (self.ranker.model if self.name == "ranker" else model_of(self.retriever)).train()

        topics = self._topics()

        def one(step: int) -> dict[str, float]:
            seed_step(cfg.seed, stage, step)
            docs = self.ctx.data.docs
            if self.name == "retriever" and self._tas():
                batch, target = tas.draw(self.groups, docs, cfg, stage, step, topics, self.teacher)
            else:
                batch = steps.draw_batch(self.groups, docs, self.stage_cfg, cfg.seed, stage, step)
                target = None
            if self.name == "ranker":
                loss = steps.ranker_loss(self.ranker, batch, steps.train_pair_length(cfg))
            elif cfg.retriever_loss in steps.LABEL_LOSSES:  # the labels alone, no ranker
                loss = steps.LABEL_LOSSES[cfg.retriever_loss](
                    self.retriever, batch, cfg.scale, cfg.train_doc_max_length
                )
            else:
                assert self.teacher is not None, "the AR2 loss needs a teacher"
                loss = steps.ar2_retriever_step_loss(
                    self.retriever, self.teacher, batch, cfg, target
                )
            return {"loss": self.stepper.step(loss)}

        def checkpoint(step: int) -> None:
            save([self.r, self.phase, step], log)

        owner, attrs = (
            (self.ranker, ("model",)) if self.name == "ranker" else (self.retriever, TOWERS)
        )
        with distributed.data_parallel(owner, attrs):
            every = cfg.checkpoint_every
            run_steps(stage, self.stage_cfg.steps, one, checkpoint, every, start, log)
        save([self.r, self.phase + 1, 0], StageLog())
        return log
