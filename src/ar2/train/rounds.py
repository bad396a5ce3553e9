"""The adversarial rounds (spec §5.2): refresh + mine → ranker steps → retriever steps → eval.

Both models keep one optimiser and one linear schedule across all rounds (spec §5.3), held in a
rolling checkpoint ``checkpoints/ar2`` whose position ``(round, phase, step)`` tells a resumed run
where to continue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ar2.config import AR2Config
from ar2.data.training import read_groups, write_groups
from ar2.data.trec import read_run, write_run
from ar2.encoders import BiEncoder, CrossEncoder
from ar2.train import steps
from ar2.train.data import TrainData
from ar2.train.loop import Stepper, load_checkpoint, run_steps, save_checkpoint, seed_step
from ar2.train.stage import MetricsLog, model_of, tail_mean

PHASES = ("ranker", "retriever")


def mine_round(
    out: Path,
    r: int,
    retriever: BiEncoder,
    ranker: CrossEncoder | None,
    data: TrainData,
    cfg: AR2Config,
    metrics: MetricsLog,
) -> None:
    """Refresh the index with ``retriever``, mine round ``r``'s groups, evaluate on dev."""
    from ar2.evaluate import evaluate
    from ar2.index import FaissIndex
    from ar2.mining import mine
    from ar2.pipeline import DenseRetriever

    folder = out / "mined" / f"round-{r}"
    if folder.is_dir():
        return
    vectors = retriever.encode_docs(data.corpus, progress=True)
    index = FaissIndex.build(vectors, [d.id for d in data.corpus])
    dense = DenseRetriever(retriever, index)
    groups = mine(dense, data.train, data.train_qrels, cfg.mine_k)
    dev_run = dense.retrieve(data.dev, 100)
    write_run(dev_run, out / "dev_runs" / f"round-{r}.trec")
    dev = {"G": evaluate(dev_run, data.dev_qrels, [cfg.eval_measure])[cfg.eval_measure]}
    metrics.write({"stage": f"dev-g-{r}", "round": r, "dev": dev, "groups": len(groups)})
    if ranker is not None:
        dev_rerank(out, r, ranker, data, cfg, metrics)
    index.save(out / "indexes" / f"round-{r}", {"encoder": retriever.describe()})
    source = "g0/retriever" if r == 0 else f"rounds/{r}/retriever"
    provenance = {"round": r, "k": cfg.mine_k, "n": cfg.retriever.n_neg, "checkpoint": source}
    write_groups(folder, groups, provenance)  # last: its presence marks the round as mined


def dev_rerank(
    out: Path, r: int, ranker: CrossEncoder, data: TrainData, cfg: AR2Config, metrics: MetricsLog
) -> None:
    """Rerank round ``r``'s dev run with ``ranker`` and log G+D."""
    from ar2.evaluate import evaluate
    from ar2.pipeline import CrossEncoderRanker, SearchPipeline

    run = read_run(out / "dev_runs" / f"round-{r}.trec")
    fixed = _FixedRun(run)
    pipe = SearchPipeline(fixed, CrossEncoderRanker(ranker, data.docs), cfg.rerank_k)
    reranked = pipe.run(data.dev, 100)
    value = evaluate(reranked, data.dev_qrels, [cfg.eval_measure])[cfg.eval_measure]
    metrics.write({"stage": f"dev-gd-{r}", "round": r, "dev": {"G+D": value}})


class _FixedRun:
    def __init__(self, run: dict[str, Any]) -> None:
        self.run = run

    def retrieve(self, queries: Any, k: int) -> dict[str, Any]:
        return {q.id: self.run.get(q.id, [])[:k] for q in queries}


def adversarial_rounds(
    out: Path,
    data: TrainData,
    retriever: BiEncoder,
    ranker: CrossEncoder,
    cfg: AR2Config,
    metrics: MetricsLog,
) -> tuple[BiEncoder, CrossEncoder]:
    """Run ``cfg.rounds`` rounds; returns the final retriever and ranker."""
    g_model, d_model = model_of(retriever), ranker.model
    steppers = {
        "retriever": Stepper(g_model, cfg.retriever, cfg.rounds * cfg.retriever.steps),
        "ranker": Stepper(d_model, cfg.ranker, cfg.rounds * cfg.ranker.steps),
    }
    models = {"retriever": g_model, "ranker": d_model}
    ckpt = out / "checkpoints" / "ar2"
    pos = tuple(load_checkpoint(ckpt, models, steppers)["pos"]) if ckpt.is_dir() else (1, 0, 0)
    for r in range(1, cfg.rounds + 1):
        groups = read_groups(out / "mined" / f"round-{r - 1}")
        for phase, name in enumerate(PHASES):
            if (r, phase) < pos[:2]:
                continue
            start = pos[2] if (r, phase) == pos[:2] else 0
            trainer = _Phase(name, r, groups, data, cfg, retriever, ranker, steppers[name])
            losses = trainer.run(
                start, lambda p, s: save_checkpoint(ckpt, models, steppers, {"pos": p + [s]})
            )
            metrics.write(
                {"stage": f"round-{r}-{name}", "round": r, "model": name, "loss": tail_mean(losses)}
            )
        _finish_round(out, r, retriever, ranker, data, cfg, metrics)
    return retriever, ranker


def _finish_round(
    out: Path,
    r: int,
    retriever: BiEncoder,
    ranker: CrossEncoder,
    data: TrainData,
    cfg: AR2Config,
    metrics: MetricsLog,
) -> None:
    folder = out / "rounds" / str(r)
    if not (folder / "ranker").is_dir():
        retriever.save(folder / "retriever")
        ranker.save(folder / "ranker")
    mine_round(out, r, retriever, ranker, data, cfg, metrics)


class _Phase:
    """One model's steps in one round: the ranker (listwise CE) or the retriever (AR2 loss)."""

    def __init__(self, name, r, groups, data, cfg, retriever, ranker, stepper) -> None:  # type: ignore[no-untyped-def]
        self.name, self.r, self.groups, self.data, self.cfg = name, r, groups, data, cfg
        self.retriever, self.ranker, self.stepper = retriever, ranker, stepper
        self.stage_cfg = cfg.ranker if name == "ranker" else cfg.retriever

    def run(self, start: int, save: Any) -> list[float]:
        stage = f"round-{self.r}-{self.name}"
        (self.ranker.model if self.name == "ranker" else model_of(self.retriever)).train()

        def one(step: int) -> dict[str, float]:
            seed_step(self.cfg.seed, stage, step)
            batch = steps.draw_batch(
                self.groups, self.data.docs, self.stage_cfg, self.cfg.seed, stage, step
            )
            if self.name == "ranker":
                loss = steps.ranker_loss(self.ranker, batch)
            else:
                loss = steps.ar2_retriever_step_loss(self.retriever, self.ranker, batch, self.cfg)
            return {"loss": self.stepper.step(loss)}

        phase = PHASES.index(self.name)
        logs = run_steps(
            stage,
            self.stage_cfg.steps,
            one,
            lambda s: save([self.r, phase], s),
            self.cfg.checkpoint_every,
            start,
        )
        save([self.r, phase + 1], 0)
        return [x["loss"] for x in logs]
