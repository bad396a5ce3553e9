"""One optimiser step of each AR2 stage: batch composition, forward passes and the loss.

Every batch is a pure function of ``(seed, stage, step)``: queries are taken in a seeded
permutation per epoch and negatives are re-sampled each time a query is drawn (spec §4.1.7).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from ar2 import distributed, losses
from ar2.config import AR2Config, StageConfig
from ar2.data.training import TrainingGroup
from ar2.encoders import BiEncoder, CrossEncoder
from ar2.errors import Ar2Error
from ar2.mining import sample_negatives
from ar2.types import Doc, Query

if TYPE_CHECKING:
    from ar2.train.teacher import Teacher


class Lengths(Protocol):
    """The cut-offs of training batches: :class:`~ar2.config.AR2Config` and
    :class:`~ar2.config.PretrainConfig` have them."""

    @property
    def query_max_length(self) -> int: ...

    @property
    def train_doc_max_length(self) -> int | None: ...


class Batch(NamedTuple):
    """``B`` queries, each with a group of ``M = 1 + n`` documents, the positive first.

    Under data parallelism a batch is this process's shard of the global batch, and
    ``offset`` the global index of its first query.
    """

    queries: list[Query]
    docs: list[Doc]  # (B * M,) in query-major order
    offset: int = 0
    relevant: tuple[frozenset[str], ...] = ()  # (B,) each query's positives (doc ids)
    ids: tuple[str, ...] = ()  # (W * B * M,) the doc ids of the whole global batch

    @property
    def group_size(self) -> int:
        return len(self.docs) // len(self.queries)

    def shard(self, w: distributed.World) -> Batch:
        """This process's contiguous share of the queries, with their groups."""
        queries = distributed.shard(self.queries, w)
        relevant = tuple(distributed.shard(self.relevant, w)) if self.relevant else ()
        return Batch(
            queries, distributed.shard(self.docs, w), w.rank * len(queries), relevant, self.ids
        )


def draw_batch(
    groups: Sequence[TrainingGroup],
    docs: Mapping[str, Doc],
    cfg: StageConfig,
    seed: int,
    stage: str,
    step: int,
    picks: Sequence[int] | None = None,
) -> Batch:
    """The batch of ``step``: ``cfg.batch_size`` groups from a seeded per-epoch permutation
    (or the groups at ``picks``: :func:`ar2.train.tas.topic_picks`), each with a random
    positive and ``cfg.n_neg`` random negatives of its pool.

    Every process draws the same global batch and keeps its own shard of it.
    """
    from ar2.train.loop import step_rng

    if not groups:
        raise Ar2Error(
            f"{stage}: no training query has both a positive and a retrieved hard negative. "
            "Fix: check qrels/train.tsv against the corpus, raise mine_k (--set mine_k=200), or "
            "loosen the false-negative filters (mine_rank_start, mine_relative_margin)"
        )
    if picks is None:
        picks = epoch_picks(len(groups), cfg.batch_size, seed, stage, step)
    picked = [groups[i] for i in picks]
    rng = step_rng(seed, stage, step)
    batch_docs: list[Doc] = []
    for group in picked:
        positive = rng.choice(group.positives)
        negatives = sample_negatives(group.negatives, cfg.n_neg, rng)
        batch_docs.extend(docs[d] for d in (positive, *negatives))
    relevant = tuple(frozenset(g.positives) for g in picked)
    ids = tuple(d.id for d in batch_docs)
    return Batch([g.query for g in picked], batch_docs, 0, relevant, ids).shard(distributed.world())


def epoch_picks(n: int, batch_size: int, seed: int, stage: str, step: int) -> list[int]:
    """The indices of ``step``'s batch among ``n`` items: one seeded permutation per epoch,
    taken in order, so every item is drawn once per epoch.

    Example:
        >>> sorted(epoch_picks(4, 2, 0, "g0", 0) + epoch_picks(4, 2, 0, "g0", 1))
        [0, 1, 2, 3]
    """
    orders: dict[int, list[int]] = {}  # one seeded permutation per epoch the batch touches
    picked = []
    for i in range(batch_size):
        epoch, offset = divmod(step * batch_size + i, n)
        if epoch not in orders:
            orders[epoch] = list(range(n))
            random.Random(f"{seed}/{stage}/epoch{epoch}").shuffle(orders[epoch])
        picked.append(orders[epoch][offset])
    return picked


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
    return losses.in_batch_contrastive(
        q, d, temperature=1.0 / scale, group=batch.group_size, offset=batch.offset
    )


def decoupled_retriever_loss(
    encoder: BiEncoder, batch: Batch, scale: float, doc_len: int | None = None
) -> Any:
    """DEXML's decoupled softmax (``retriever_loss = "decoupled"``) over every passage of the
    global batch: each query's positives, wherever they appear in it, are left out of one
    another's denominators (:func:`ar2.losses.decoupled_softmax`)."""
    q = encoder.embed_queries(batch.queries)  # (B, dim)
    d = distributed.gather(encoder.embed_docs(batch.docs, doc_len))  # (W * B * M, dim)
    positives = relevant_passages(batch, q.device)  # (B, W * B * M)
    return losses.decoupled_softmax(scores=scale * q @ d.T, positives=positives)


def relevant_passages(batch: Batch, device: Any, own: bool = True) -> Any:
    """``(B, W·B·M)`` True where a passage of the global batch is relevant to the query: its
    drawn positive (unless ``own`` is False) and every passage among its positives, wherever
    it sits (another query's positive or negative)."""
    import torch

    rows = range(batch.offset, batch.offset + len(batch.queries))
    columns = [b * batch.group_size for b in rows]  # each query's drawn positive
    mask = [
        [(own and j == col) or (j != col and i in rel) for j, i in enumerate(batch.ids)]
        for col, rel in zip(columns, batch.relevant, strict=True)
    ]
    return torch.tensor(mask, dtype=torch.bool, device=device)  # (B, W * B * M)


LABEL_LOSSES = {
    "contrastive": contrastive_retriever_loss,  # the ANCE/STAR-style control
    "decoupled": decoupled_retriever_loss,  # DEXML
}
"""The retriever losses of a round that read the labels alone (no ranker), by their
``retriever_loss`` name; ``"ar2"`` is :func:`ar2_retriever_step_loss`."""


def ranker_loss(ranker: CrossEncoder, batch: Batch, max_length: int | None = None) -> Any:
    """D0 and AR2 ranker steps (spec §3.2): listwise cross-entropy, positive at column 0."""
    return losses.listwise_ce(ranker_scores(ranker, batch, max_length))


def ar2_retriever_step_loss(
    encoder: BiEncoder, teacher: Teacher, batch: Batch, cfg: AR2Config, target: Any = None
) -> Any:
    """AR2 retriever step (spec §3.3): λ·L_ADV + (1−λ)·L_KD against the frozen teacher (the
    ranker, or an ensemble: :mod:`ar2.train.teacher`), as this process's share of the global
    batch (:func:`ar2_shard_loss`). ``target``: the teacher's ``(B, M)`` scores of the batch,
    if the sampler computed them already (:func:`ar2.train.tas.draw`)."""
    scores, in_batch = group_scores(
        encoder, batch, cfg.scale, cfg.train_doc_max_length, cfg.in_batch
    )
    if target is None:
        target = teacher.batch_scores(batch, cfg)
    target = target.to(scores.device)  # (B, M), constant
    shards = distributed.world().size
    masked = in_batch is not None and cfg.in_batch_masks_positives
    others = relevant_passages(batch, scores.device, own=False) if masked else None
    return ar2_shard_loss(scores, target, cfg, in_batch_scores=in_batch, shards=shards,
                          offset=batch.offset, in_batch_exclude=others)  # fmt: skip


def ar2_shard_loss(
    retriever_scores: Any,
    ranker_scores: Any,
    cfg: AR2Config,
    *,
    in_batch_scores: Any = None,
    shards: int = 1,
    offset: int = 0,
    in_batch_exclude: Any = None,
) -> Any:
    """This process's share of the global batch's AR2 loss: the paper's equation on this
    shard (:func:`ar2.losses.ar2_retriever_loss`) plus what the training step adds to it.

    - **Shards** (:mod:`ar2.distributed`). DDP averages the ``W`` processes' gradients, so it
      minimises the mean of their losses. Over equal shards L_KD (a mean over queries) and a
      ``"mean_per_query"`` L_ADV average to the global batch's value; the original summed
      L_ADV does not: the global sum is ``W`` times the shards' mean. Each shard therefore
      adds ``λ·(W − 1)·L_ADV``, making its loss ``λ·W·L_ADV + (1 − λ)·L_KD``.
    - **In-batch term** (``cfg.in_batch``; our addition, AR2 has none: spec §3.3 step 1).
      Given ``in_batch_scores``, the mean NLL of each query's positive among every passage of
      the global batch (:func:`ar2.losses.in_batch_nll`, as in G0's loss) is added, weight 1;
      the passages of ``in_batch_exclude`` (the query's other relevant ones) are left out.

    Args:
        retriever_scores: ``(B, M)`` retriever scores of this shard's groups, positive first.
        ranker_scores: ``(B, M)`` ranker logits for the same candidates (no gradient reaches
            them).
        cfg: ``adv_lambda`` (λ), ``adv_reduction``, ``kd_loss`` and ``kd_temperature``.
        in_batch_scores: ``(B, W·B·M)`` scores against every process's groups in global query
            order, or ``None`` (no in-batch term).
        shards: ``W``, the number of processes sharing the global batch.
        offset: the global index of this shard's first query: query ``b``'s positive is
            column ``(offset + b)·M`` of ``in_batch_scores``.
        in_batch_exclude: ``(B, W·B·M)`` True where a passage is left out of the in-batch
            softmax (:func:`relevant_passages` with ``own = False``), or ``None``.

    Example:
        >>> import torch
        >>> s = torch.tensor([[0.0, 0.0]]); r = torch.tensor([[0.0, 0.0]])
        >>> adv = losses.ar2_adversarial(s, r)  # 2 (log 0.5)^2
        >>> loss = ar2_shard_loss(s, r, AR2Config(adv_lambda=1.0), shards=2)
        >>> torch.allclose(loss, 2 * adv)  # this shard's half of the global sum, counted twice
        True
    """
    loss = losses.ar2_retriever_loss(
        retriever_scores=retriever_scores,
        ranker_scores=ranker_scores,
        adv_lambda=cfg.adv_lambda,
        reduction=cfg.adv_reduction,
        temperature=cfg.kd_temperature,
        kd=cfg.kd_loss,
    )  # ()
    if cfg.adv_reduction == "sum" and shards > 1:  # the global sum: W times the shards' mean
        adv = losses.ar2_adversarial(retriever_scores, ranker_scores, reduction="sum")  # ()
        loss = loss + cfg.adv_lambda * (shards - 1) * adv  # ()
    if in_batch_scores is None:
        return loss
    batch, group = retriever_scores.shape
    if in_batch_scores.shape != (batch, shards * batch * group):
        raise ValueError(
            f"in_batch_scores must have shape (B, W * B * M) = "
            f"{(batch, shards * batch * group)}; got {tuple(in_batch_scores.shape)}"
        )
    in_batch_nll = losses.in_batch_nll(in_batch_scores, group=group, offset=offset,
                                       exclude=in_batch_exclude)  # fmt: skip
    return loss + in_batch_nll  # ()


def train_pair_length(cfg: Lengths) -> int | None:
    """The ranker's pair cut-off in training: query + ``train_doc_max_length`` tokens, if set."""
    return cfg.train_doc_max_length and cfg.query_max_length + cfg.train_doc_max_length
