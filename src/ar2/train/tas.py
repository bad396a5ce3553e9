"""TAS-Balanced's two samplers for the round's retriever steps (Hofstätter et al., "Efficiently
Teaching an Effective Dense Retriever with Balanced Topic Aware Sampling", SIGIR 2021, §3).

- **Topic-aware batches** (``[sampling] topic_batches``): the training queries are clustered
  once per round by k-means over the query vectors of the retriever the round starts from;
  each batch is filled from one random topic, then another while it is not full (the paper's
  one cluster per batch), so its in-batch negatives share its topic.
- **Balanced margins** (``[sampling] balanced_margins``): a query's candidate negatives (the
  first ``pool`` of its mined pool) are scored by the teacher, their margins
  ``T(q, p+) - T(q, p-)`` split into ``bins`` equal-width bins over their range, and each
  negative is drawn from a non-empty bin chosen uniformly, then uniformly inside it: easy
  pairs no longer dominate. The teacher's scores of the drawn group are the step's
  distillation target, so the teacher runs once per candidate.

The topics are written to ``mined/topics-round-R.json`` when first computed, so a resumed run
batches as the killed one did. Both samplers are pure functions of the seed, the stage and the
step (and the teacher's scores), like :func:`ar2.train.steps.draw_batch`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ar2 import distributed
from ar2._io import atomic_write_json
from ar2._optional import require
from ar2.config import AR2Config
from ar2.data.training import TrainingGroup
from ar2.train.loop import step_rng
from ar2.train.steps import Batch, draw_batch, epoch_picks
from ar2.types import Doc

if TYPE_CHECKING:
    from ar2.encoders import BiEncoder
    from ar2.train.teacher import Teacher


def balanced_negatives(
    margins: Sequence[float], n: int, rng: random.Random, bins: int
) -> list[int]:
    """``n`` candidate indices, each from a non-empty margin bin chosen uniformly, then
    uniformly inside it, without replacement (a pool smaller than ``n`` is reused only once
    it is exhausted, as :func:`ar2.mining.sample_negatives` tiles it).

    Example:
        >>> margins = [0.0, 0.1, 0.2, 0.3, 9.0]  # four hard negatives and one easy one
        >>> picks = [balanced_negatives(margins, 1, random.Random(s), 2)[0] for s in range(400)]
        >>> round(picks.count(4) / 400, 1)  # the easy one: half the draws, not a fifth
        0.5
    """
    if not margins or n <= 0:
        return []
    low, high = min(margins), max(margins)
    width = (high - low) / bins
    which = [min(int((m - low) / width), bins - 1) if width > 0 else 0 for m in margins]
    chosen: list[int] = []
    while len(chosen) < n:
        buckets: dict[int, list[int]] = {}
        for i, b in enumerate(which):
            buckets.setdefault(b, []).append(i)
        while buckets and len(chosen) < n:
            b = rng.choice(sorted(buckets))
            chosen.append(buckets[b].pop(rng.randrange(len(buckets[b]))))
            if not buckets[b]:
                del buckets[b]
    return chosen


def topic_picks(
    topics: Sequence[Sequence[int]], batch_size: int, seed: int, stage: str, step: int
) -> list[int]:
    """The group indices of ``step``'s batch: a random topic's queries (a random sample of
    them if it holds more than the batch needs), then another topic's, until the batch is
    full; a query appears once per batch unless the batch outnumbers the queries.

    Example:
        >>> topics = [[0, 1, 2, 3], [4, 5], [6, 7, 8, 9]]
        >>> picks = topic_picks(topics, 4, seed=0, stage="s", step=0)
        >>> len(picks), len(set(picks))
        (4, 4)
    """
    rng = step_rng(seed, f"{stage}/topics", step)
    total = sum(len(t) for t in topics)
    picks: list[int] = []
    used: set[int] = set()
    while len(picks) < batch_size:
        if len(used) == total:  # every query is in the batch already: a new pass
            used.clear()
        free = [i for i in topics[rng.randrange(len(topics))] if i not in used]
        take = rng.sample(free, min(len(free), batch_size - len(picks)))
        picks += take
        used.update(take)
    return picks


def cluster(vectors: np.ndarray, n: int, seed: int) -> list[list[int]]:
    """The rows of ``vectors`` grouped by k-means into at most ``n`` topics (FAISS), each
    topic's rows in order, empty topics left out.

    Example:
        >>> v = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
        >>> sorted(cluster(v, 2, seed=0))
        [[0, 1], [2, 3]]
    """
    faiss = require("faiss")
    n = max(1, min(n, len(vectors)))
    kmeans = faiss.Kmeans(vectors.shape[1], n, niter=20, seed=seed, verbose=False)
    kmeans.train(np.ascontiguousarray(vectors, dtype=np.float32))
    _, assigned = kmeans.index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    topics: dict[int, list[int]] = {}
    for row, topic in enumerate(assigned[:, 0].tolist()):
        topics.setdefault(topic, []).append(row)
    return [topics[t] for t in sorted(topics)]


def topics_for_round(
    out: Path, r: int, groups: Sequence[TrainingGroup], retriever: BiEncoder, cfg: AR2Config
) -> list[list[int]]:
    """Round ``r``'s topics over ``groups`` (``mined/topics-round-R.json``, computed with
    ``retriever``, the round's starting one, on first use and read back after). Rank 0
    decides and every process gets its topics, so all of them draw the same batches."""
    return distributed.decide_on_main(_topics, out / "mined" / f"topics-round-{r}.json", r,
                                      groups, retriever, cfg)  # fmt: skip


def _topics(
    path: Path, r: int, groups: Sequence[TrainingGroup], retriever: BiEncoder, cfg: AR2Config
) -> list[list[int]]:
    ids = [g.query.id for g in groups]
    if path.is_file():
        record = json.loads(path.read_text(encoding="utf-8"))
        if record["queries"] == ids:
            return [list(t) for t in record["topics"]]
    n = cfg.sampling.topics or max(1, round(len(groups) / cfg.retriever.batch_size))
    vectors = retriever.encode_queries([g.query.text for g in groups])  # (groups, dim)
    topics = cluster(vectors, n, cfg.seed)
    atomic_write_json(path, {"kind": "tas_topics", "round": r, "topics_asked": n,
                             "queries": ids, "topics": topics})  # fmt: skip
    return topics


def draw(
    groups: Sequence[TrainingGroup],
    docs: Mapping[str, Doc],
    cfg: AR2Config,
    stage: str,
    step: int,
    topics: Sequence[Sequence[int]] | None,
    teacher: Teacher | None,
) -> tuple[Batch, Any]:
    """``step``'s batch under ``cfg.sampling`` and, with balanced margins, the teacher's
    ``(B, M)`` scores of its groups (``None`` otherwise: the step scores them itself).

    Every process draws the same queries and positives and keeps its shard; the balanced
    negatives of a query depend on that query alone, so each process draws its own shard's.
    """
    stage_cfg, sampling = cfg.retriever, cfg.sampling
    size = stage_cfg.batch_size
    picks = (
        topic_picks(topics, size, cfg.seed, stage, step)
        if topics is not None
        else epoch_picks(len(groups), size, cfg.seed, stage, step)
    )
    if not sampling.balanced_margins:
        return draw_batch(groups, docs, stage_cfg, cfg.seed, stage, step, picks), None
    picked = [groups[i] for i in picks]
    rng = step_rng(cfg.seed, stage, step)
    positives = [rng.choice(g.positives) for g in picked]
    assert teacher is not None, "balanced margins need the teacher's scores"
    return _balanced(picked, positives, docs, cfg, stage, step, teacher)


def _balanced(
    picked: list[TrainingGroup],
    positives: list[str],
    docs: Mapping[str, Doc],
    cfg: AR2Config,
    stage: str,
    step: int,
    teacher: Teacher,
) -> tuple[Batch, Any]:
    torch = require("torch")
    w = distributed.world()
    mine = distributed.shard(list(zip(picked, positives)), w)
    pools = [list(group.negatives[: cfg.sampling.pool]) for group, _ in mine]
    scores = _pool_scores(mine, pools, docs, cfg, teacher)  # each (1 + pool,)
    queries, batch_docs, rows = [], [], []
    for (group, positive), pool, row in zip(mine, pools, scores, strict=True):
        margins = (row[0] - row[1:]).tolist()  # (pool,)
        rng = step_rng(cfg.seed, f"{stage}/{group.query.id}", step)
        chosen = balanced_negatives(margins, cfg.retriever.n_neg, rng, cfg.sampling.bins)
        queries.append(group.query)
        batch_docs += [docs[positive], *(docs[pool[i]] for i in chosen)]
        rows.append(row[[0, *(i + 1 for i in chosen)]])  # (M,)
    relevant = tuple(frozenset(group.positives) for group, _ in mine)
    ids: tuple[str, ...] = ()  # (W * B * M,) the global batch's, read by the in-batch mask
    if cfg.in_batch_masks_positives:
        ids = tuple(distributed.gather_objects([d.id for d in batch_docs]))
    batch = Batch(queries, batch_docs, w.rank * len(queries), relevant, ids)
    return batch, torch.stack(rows)  # (B, M)


def _pool_scores(
    mine: list[tuple[TrainingGroup, str]],
    pools: list[list[str]],
    docs: Mapping[str, Doc],
    cfg: AR2Config,
    teacher: Teacher,
) -> list[Any]:
    """The teacher's scores of each query's positive and pool, ``(1 + pool,)`` each: one call
    for the whole shard when the pools are alike in length (the usual case), else one each."""
    pairs = [[docs[d] for d in (positive, *pool)] for (_, positive), pool in zip(mine, pools)]
    queries = [group.query for group, _ in mine]
    if len({len(p) for p in pairs}) == 1:
        flat = [d for p in pairs for d in p]
        return list(teacher.batch_scores(Batch(queries, flat), cfg).float().cpu())
    return [teacher.batch_scores(Batch([q], p), cfg)[0].float().cpu()
            for q, p in zip(queries, pairs)]  # fmt: skip
