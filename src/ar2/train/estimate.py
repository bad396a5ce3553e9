"""How long a run will take, said before it starts.

A run's work is counted in tokens: tokens that go through a training pass (forward and
backward) and tokens that go through an inference pass (indexing, the ranker as a teacher,
reranking). Both are priced on this machine by a few timed passes of the start retriever with
the run's dropout, so the estimate follows the hardware, the precision and the preset; the
ranker is priced at the retriever's rate (the same model unless ``ranker_model`` says
otherwise), and a data-parallel run's work is split evenly over its processes (but for the
stages rank 0 runs alone, :data:`ON_MAIN`). Stages already
done (a resumed run) are left out. A recipe's own last stage (ADORE's query tower) and the
command it ends in (``repconc``, ``sparse``: :data:`FOLLOW_UP_WORK`) are counted too; the
sparse encoder's MLM head is priced from the model's shape (:func:`mlm_head`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ar2 import distributed
from ar2._optional import require
from ar2.config import AR2Config
from ar2.encoders import BiEncoder
from ar2.train.data import TrainData
from ar2.train.recipes import RECIPES
from ar2.types import Doc

log = logging.getLogger("ar2.train")

SAMPLE = 256  # documents and queries whose token counts stand for the collection's


@dataclass(frozen=True)
class Work:
    """Tokens through training passes and through inference passes."""

    train: float = 0.0
    infer: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(self.train + other.train, self.infer + other.infer)

    def seconds(self, prices: tuple[float, float]) -> float:
        """The time this work takes at ``prices`` (seconds per training, inference token)."""
        return self.train * prices[0] + self.infer * prices[1]


@dataclass(frozen=True)
class Lengths:
    """Mean token counts: a query, a document cut for training and for the index, a pair."""

    query: float
    doc_train: float
    doc_index: float
    mlm_head: float = 1.0  # an MLM head's pass over a token, in encoder passes (:func:`mlm_head`)

    def pair(self, doc: str = "train") -> float:
        return self.query + (self.doc_train if doc == "train" else self.doc_index)


def plan(cfg: AR2Config, data: TrainData, lengths: Lengths) -> dict[str, Work]:
    """Each stage's work, keyed by its name in ``metrics.jsonl`` (``final`` is the test
    report); ``cfg`` holds the stage lengths for this collection.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> from ar2.config import StageConfig
        >>> data = NS(corpus=[None] * 100, train=[None] * 10, dev=[None] * 5, test=[])
        >>> cfg = AR2Config(rounds=1, ranker=StageConfig(steps=0))
        >>> work = plan(cfg, data, Lengths(query=10, doc_train=100, doc_index=200))
        >>> work["g0-train"].train  # 100 steps x 32 queries x (10 + 2 x 100) tokens
        672000
    """
    q, ranked, index = lengths.query, cfg.rerank_k, len(data.corpus) * lengths.doc_index

    def retriever_steps(stage: Any) -> float:
        return stage.steps * stage.batch_size * (q + (1 + stage.n_neg) * lengths.doc_train)

    def pairs(stage: Any, group: int | None = None) -> float:
        group = group if group is not None else 1 + stage.n_neg  # documents per query
        return stage.steps * stage.batch_size * group * lengths.pair()

    def refresh() -> Work:  # index, mining queries and dev queries
        return Work(infer=index + (len(data.train) + len(data.dev)) * q)

    dev_rerank = Work(infer=len(data.dev) * ranked * lengths.pair("index"))
    work = {"g0-train": Work(train=retriever_steps(cfg.g0)), "dev-g-0": refresh()}
    if not cfg.skip_d0:
        work["d0-train"] = Work(train=pairs(cfg.d0))
    work["dev-gd-0"] = dev_rerank
    for r in range(1, cfg.rounds + 1):
        if cfg.ranker.steps:  # a phase of no steps is skipped
            work[f"round-{r}-ranker"] = Work(train=pairs(cfg.ranker))
        if cfg.retriever.steps:
            scored = 1 + cfg.sampling.pool if cfg.sampling.balanced_margins else None  # TAS-B
            teacher = pairs(cfg.retriever, scored) if cfg.retriever_loss == "ar2" else 0.0
            work[f"round-{r}-retriever"] = Work(retriever_steps(cfg.retriever), teacher)
        work[f"dev-g-{r}"], work[f"dev-gd-{r}"] = refresh(), dev_rerank
    if cfg.average_rounds > 1 and cfg.rounds > 0:
        work["dev-avg"] = Work(infer=index + len(data.dev) * q)  # the averaged retriever
    if cfg.adore.steps:  # the adore recipe: the query tower alone, then its dev measurements
        tower = cfg.adore.steps_for(len(data.train)) * cfg.adore.batch_size * q
        work["adore-train"] = Work(train=tower)
        work["dev-adore"], work["dev-gd-adore"] = Work(infer=len(data.dev) * q), dev_rerank
    test = len(data.test) * (q + ranked * lengths.pair("index"))
    work["final"] = Work(infer=index + test)  # the start model's index, test queries, rerank
    then = RECIPES[cfg.recipe].then
    if then:  # the recipe's command over the finished run, with its defaults
        work[then] = FOLLOW_UP_WORK[then](cfg, data, lengths)
    return work


def _repconc_work(cfg: AR2Config, data: TrainData, lengths: Lengths) -> Work:
    """``ar2 repconc``: the constrained stage (both towers), the corpus encoded once by the new
    document tower, and JPQ's query-tower stage twice (RepCONC's second stage, the JPQ arm)."""
    from ar2.config import RepCONCConfig

    settings = RepCONCConfig()
    c, j = settings.constrained, settings.stage
    constrained = c.steps * c.batch_size * (lengths.query + (1 + c.n_neg) * lengths.doc_train)
    towers = 2 * j.steps_for(len(data.train)) * j.batch_size * lengths.query
    return Work(train=constrained + towers, infer=len(data.corpus) * lengths.doc_index)


def _sparse_work(cfg: AR2Config, data: TrainData, lengths: Lengths) -> Work:
    """``ar2 sparse``: documents through the encoder and its MLM head (``lengths.mlm_head``
    times an encoder pass) in training, then the corpus, both cut at its ``doc_max_length``
    (256, taken as the index's cut); its queries run no model."""
    from ar2.config import SparseConfig

    s = SparseConfig().stage
    docs = s.steps * s.batch_size * (1 + s.n_neg) * lengths.doc_index
    return Work(train=lengths.mlm_head * docs,
                infer=lengths.mlm_head * len(data.corpus) * lengths.doc_index)  # fmt: skip


FOLLOW_UP_WORK = {"repconc": _repconc_work, "sparse": _sparse_work}
"""The work of each follow-up command (:data:`ar2.train.follow_up.FOLLOW_UPS`), by name."""

ON_MAIN = frozenset({"final", "adore-train", *FOLLOW_UP_WORK})
"""The stages that rank 0 runs alone (``distributed.on_main``): not split over the processes."""


def mlm_head(config: Any) -> float:
    """An MLM head's pass over a token priced in encoder passes: ``1 + (h² + h·V) / (12·h²·L)``
    (the head's transform and its decoder over the vocabulary ``V``, against ``L`` layers of
    about ``12·h²`` multiply-adds each; attention's length term left out).

    Example:
        >>> from types import SimpleNamespace as NS  # all-MiniLM-L6-v2's shape
        >>> round(mlm_head(NS(hidden_size=384, vocab_size=30522, num_hidden_layers=6)), 2)
        2.12
    """
    h, v, layers = (getattr(config, k, None) for k in ("hidden_size", "vocab_size",
                                                       "num_hidden_layers"))  # fmt: skip
    if not (h and v and layers):  # a model that does not say its shape: about MiniLM's
        return 2.0
    return float(1 + (h * h + h * v) / (12 * h * h * layers))


def _measure_lengths(encoder: BiEncoder, data: TrainData, cfg: AR2Config, seed: int) -> Lengths:
    """Mean token counts over a seeded sample of the corpus and the training queries."""
    rng = random.Random(seed)
    docs = rng.sample(data.corpus, min(SAMPLE, len(data.corpus)))
    queries = rng.sample(data.train, min(SAMPLE, len(data.train)))
    texts = [encoder.doc_text(d) for d in docs]
    full = encoder.tokenizer(texts, truncation=True, max_length=cfg.doc_max_length)["input_ids"]
    train_cut = cfg.train_doc_max_length or cfg.doc_max_length
    query_ids = encoder.tokenizer(
        [encoder.query_text(x) for x in queries], truncation=True, max_length=cfg.query_max_length
    )["input_ids"]
    return Lengths(
        query=_mean(len(x) for x in query_ids),
        doc_train=_mean(min(len(x), train_cut) for x in full),
        doc_index=_mean(len(x) for x in full),
        mlm_head=mlm_head(encoder.doc_model.config),
    )


def _price(
    encoder: BiEncoder, docs: Sequence[Doc], cut: int, cfg: AR2Config
) -> tuple[float, float]:
    """Seconds per token of a training pass (forward and backward, with the run's dropout;
    the second of two timed) and of an inference pass, on ``docs``; gradients are dropped."""
    from ar2.train.stage import for_training

    torch = require("torch")
    model = for_training(encoder.doc_model, cfg)
    texts = docs[:16]
    timings = []
    model.train()
    for _ in range(2):
        began = time.perf_counter()
        encoder.embed_docs(texts, cut).sum().backward()
        if encoder.device.startswith("cuda"):
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - began)
    model.zero_grad(set_to_none=True)
    tokens = sum(_token_counts(encoder, texts, cut))
    began = time.perf_counter()
    encoder.encode_docs(docs[:32])
    infer = time.perf_counter() - began
    infer_tokens = sum(_token_counts(encoder, docs[:32], encoder.config.doc_max_length))
    return timings[-1] / tokens, infer / infer_tokens


def estimate(cfg: AR2Config, data: TrainData, done: set[str]) -> dict[str, float]:
    """Seconds per stage still to run, priced on this machine; logs the plan and the total."""
    encoder = BiEncoder.load(cfg.retriever_model, query_max_length=cfg.query_max_length,
                             doc_max_length=cfg.doc_max_length)  # fmt: skip
    lengths = _measure_lengths(encoder, data, cfg, cfg.seed)
    docs = random.Random(cfg.seed).sample(data.corpus, min(32, len(data.corpus)))
    prices = _price(encoder, docs, cfg.train_doc_max_length or cfg.doc_max_length, cfg)
    share = 1 / distributed.world().size  # each process does its share of a stage
    work = plan(cfg, data, lengths)
    seconds = {k: (1.0 if k in ON_MAIN else share) * w.seconds(prices)
               for k, w in work.items() if k not in done}  # fmt: skip
    d0 = "skipped" if cfg.skip_d0 else f"{cfg.d0.steps} steps"
    log.info("stages: G0 %d steps, D0 %s, %d round(s) of %d ranker + %d retriever steps",
             cfg.g0.steps, d0, cfg.rounds, cfg.ranker.steps, cfg.retriever.steps)  # fmt: skip
    log.info("estimated time on this machine: %s", format_estimate(seconds))
    return seconds


def format_estimate(seconds: dict[str, float]) -> str:
    """The total and its largest parts, for one log line.

    Example:
        >>> format_estimate({"g0-train": 600.0, "dev-g-0": 30.0, "final": 90.0})
        '12.0 min (g0-train 10.0, final 1.5, dev-g-0 0.5)'
    """
    parts = sorted(seconds.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{k} {v / 60:.1f}" for k, v in parts[:6])
    return f"{sum(seconds.values()) / 60:.1f} min ({shown})"


def _token_counts(encoder: BiEncoder, docs: Sequence[Doc], cut: int) -> list[int]:
    texts = [encoder.doc_text(d) for d in docs]
    return [len(x) for x in encoder.tokenizer(texts, truncation=True, max_length=cut)["input_ids"]]


def _mean(values: Any) -> float:
    found = list(values)
    return sum(found) / len(found) if found else 0.0
