"""One optimiser step of each AR2 stage: batch composition, forward passes and the loss.

Every batch is a pure function of ``(seed, stage, step)``: queries are taken in a seeded
permutation per epoch and negatives are re-sampled each time a query is drawn (spec §4.1.7).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ar2 import distributed, losses
from ar2._optional import require
from ar2.config import AR2Config, StageConfig
from ar2.data.training import TrainingGroup
from ar2.encoders import BiEncoder, CrossEncoder
from ar2.errors import Ar2Error
from ar2.mining import sample_negatives
from ar2.types import Doc, Query


class Batch(NamedTuple):
    """``B`` queries, each with a group of ``M = 1 + n`` documents, the positive first.

    Under data parallelism a batch is this process's shard of the global batch, and
    ``offset`` the global index of its first query.
    """

    queries: list[Query]
    docs: list[Doc]  # (B * M,) in query-major order
    offset: int = 0

    @property
    def group_size(self) -> int:
        return len(self.docs) // len(self.queries)

    def shard(self, w: distributed.World) -> Batch:
        """This process's contiguous share of the queries, with their groups."""
        queries = distributed.shard(self.queries, w)
        return Batch(queries, distributed.shard(self.docs, w), w.rank * len(queries))


def draw_batch(
    groups: Sequence[TrainingGroup],
    docs: Mapping[str, Doc],
    cfg: StageConfig,
    seed: int,
    stage: str,
    step: int,
) -> Batch:
    """The batch of ``step``: ``cfg.batch_size`` groups from a seeded per-epoch permutation.

    Every process draws the same global batch and keeps its own shard of it.
    """
    from ar2.train.loop import step_rng

    if not groups:
        raise Ar2Error(
            f"{stage}: no training query has both a positive and a retrieved hard negative. "
            "Fix: check qrels/train.tsv against the corpus, or raise mine_k"
        )
    orders: dict[int, list[int]] = {}  # one seeded permutation per epoch the batch touches
    picked = []
    for i in range(cfg.batch_size):
        epoch, offset = divmod(step * cfg.batch_size + i, len(groups))
        if epoch not in orders:
            orders[epoch] = list(range(len(groups)))
            random.Random(f"{seed}/{stage}/epoch{epoch}").shuffle(orders[epoch])
        picked.append(groups[orders[epoch][offset]])
    rng = step_rng(seed, stage, step)
    batch_docs: list[Doc] = []
    for group in picked:
        positive = rng.choice(group.positives)
        negatives = sample_negatives(group.negatives, cfg.n_neg, rng)
        batch_docs.extend(docs[d] for d in (positive, *negatives))
    return Batch([g.query for g in picked], batch_docs).shard(distributed.world())


def group_scores(
    encoder: BiEncoder, batch: Batch, scale: float, doc_len: int | None, in_batch: bool
) -> tuple[Any, Any]:
    """Retriever scores: ``(B, M)`` within each group, and with ``in_batch`` also
    ``(B, W·B·M)`` against every passage of the global batch (``W`` processes' passages
    gathered; ``None`` otherwise, so that no gather runs)."""
    q = encoder.embed_queries(batch.queries)  # (B, dim)
    d = encoder.embed_docs(batch.docs, doc_len)  # (B * M, dim)
    groups = d.view(len(batch.queries), batch.group_size, -1)  # (B, M, dim)
    scores = scale * (q.unsqueeze(1) * groups).sum(-1)  # (B, M)
    if not in_batch:
        return scores, None
    return scores, scale * q @ distributed.gather(d).T  # (B, M), (B, W * B * M)


def ranker_scores(ranker: CrossEncoder, batch: Batch, max_length: int | None = None) -> Any:
    """Ranker logits ``(B, M)`` for each query against its own group."""
    m = batch.group_size
    pairs = [
        (q.text, ranker.doc_text(d))
        for i, q in enumerate(batch.queries)
        for d in batch.docs[i * m : (i + 1) * m]
    ]
    return ranker.logits(pairs, max_length).view(len(batch.queries), m)  # (B, M)


def contrastive_retriever_loss(
    encoder: BiEncoder, batch: Batch, scale: float, doc_len: int | None = None
) -> Any:
    """Each query against every passage of the batch, NLL of its own positive.

    G0 with BM25 negatives (spec §5.1 stage 1), and the ANCE-style control of the ablations
    (``retriever_loss = "contrastive"``) with the retriever's own mined negatives.
    """
    q = encoder.embed_queries(batch.queries)  # (B, dim)
    d = distributed.gather(encoder.embed_docs(batch.docs, doc_len))  # (W * B * M, dim)
    return losses.in_batch_contrastive(q, d, 1.0 / scale, batch.group_size, batch.offset)


def ranker_loss(ranker: CrossEncoder, batch: Batch, max_length: int | None = None) -> Any:
    """D0 and AR2 ranker steps (spec §3.2): listwise cross-entropy, positive at column 0."""
    return losses.listwise_ce(ranker_scores(ranker, batch, max_length))


def ar2_retriever_step_loss(
    encoder: BiEncoder, ranker: CrossEncoder, batch: Batch, cfg: AR2Config
) -> Any:
    """AR2 retriever step (spec §3.3): λ·L_ADV + (1−λ)·L_KD against the frozen ranker."""
    torch = require("torch")
    scores, in_batch = group_scores(
        encoder, batch, cfg.scale, cfg.train_doc_max_length, cfg.in_batch
    )
    ranker.model.eval()
    with torch.no_grad():
        teacher = ranker_scores(ranker, batch, train_pair_length(cfg))  # (B, M), constant
    return losses.ar2_retriever_loss(
        scores,
        teacher,
        cfg.adv_lambda,
        cfg.adv_reduction,
        cfg.kd_temperature,
        in_batch,
        distributed.world().size,
        batch.offset,
    )


def train_pair_length(cfg: AR2Config) -> int | None:
    """The ranker's pair cut-off in training: query + ``train_doc_max_length`` tokens, if set."""
    return cfg.train_doc_max_length and cfg.query_max_length + cfg.train_doc_max_length
