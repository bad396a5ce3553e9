"""Hard-negative mining: ``retrieve_candidates → drop_positives → sample_negatives``.

The AR2 recipe (spec §4.1, §10.5): retrieve the top-K documents of every training query with the
current retriever, remove the positives (qrels with grade > 0 and, for QA data, documents that
contain an answer), keep the rest as the query's negative pool, and sample n negatives from the
pool uniformly without replacement every time the query is drawn (tiling when the pool is
smaller than n). Queries with no positive or an empty pool are dropped.

Example:
    >>> from ar2.types import Hit
    >>> run = {"q1": [Hit("d1", 3.0), Hit("d2", 2.0), Hit("d3", 1.0)]}
    >>> drop_positives(run, {"q1": {"d1": 1, "d3": 0}})
    {'q1': (['d2', 'd3'], ['d1'])}
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from ar2.data.training import TrainingGroup
from ar2.pipeline import Retriever
from ar2.types import Qrels, Query, Run

Pools = dict[str, tuple[list[str], list[str]]]
"""``query_id -> (negative pool in rank order, positives removed from the candidates)``."""


def retrieve_candidates(retriever: Retriever, queries: Sequence[Query], k: int) -> Run:
    """The top-``k`` candidates of every query from the current retriever (BM25 or dense)."""
    return retriever.retrieve(queries, k)


def drop_positives(
    run: Run,
    qrels: Qrels,
    is_answer: Callable[[Query, str], bool] | None = None,
    queries: Mapping[str, Query] | None = None,
) -> Pools:
    """Split each query's candidates into a negative pool and the positives removed from them.

    A candidate is a positive when its qrels grade is > 0 (grade 0 means judged non-relevant, a
    valid negative) or, with ``is_answer`` and ``queries`` given, when it contains an answer
    (DPR's ``has_answer``, spec §4.1.4).
    """
    pools: Pools = {}
    for qid, hits in run.items():
        relevant = {d for d, grade in qrels.get(qid, {}).items() if grade > 0}
        query = queries.get(qid) if queries else None
        pool: list[str] = []
        removed: list[str] = []
        for hit in hits:
            positive = hit.doc_id in relevant or bool(
                is_answer and query and is_answer(query, hit.doc_id)
            )
            (removed if positive else pool).append(hit.doc_id)
        pools[qid] = (pool, removed)
    return pools


def sample_negatives(pool: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """``n`` negatives drawn uniformly without replacement from ``pool``.

    As in the AR2 code, a pool smaller than ``n`` is first tiled (repeated) until it holds at
    least ``n`` ids, then shuffled and cut, so repeats appear only when they must.

    Example:
        >>> len(set(sample_negatives(list("abcdef"), 4, random.Random(0))))
        4
        >>> sorted(sample_negatives(["a", "b"], 4, random.Random(0)))
        ['a', 'a', 'b', 'b']
    """
    if not pool or n <= 0:
        return []
    tiled = list(pool) * -(-n // len(pool))  # ceil(n / len(pool)) copies
    rng.shuffle(tiled)
    return tiled[:n]


def build_groups(queries: Sequence[Query], qrels: Qrels, pools: Pools) -> list[TrainingGroup]:
    """Training groups for the queries that have a positive and a non-empty negative pool."""
    groups = []
    for query in queries:
        positives = tuple(d for d, grade in qrels.get(query.id, {}).items() if grade > 0)
        pool, removed = pools.get(query.id, ([], []))
        if positives and pool:
            groups.append(TrainingGroup(query, positives, tuple(pool), tuple(removed)))
    return groups


def mine(
    retriever: Retriever,
    queries: Sequence[Query],
    qrels: Qrels,
    k: int,
    is_answer: Callable[[Query, str], bool] | None = None,
) -> list[TrainingGroup]:
    """Retrieve the top ``k``, drop the positives, and build the training groups."""
    run = retrieve_candidates(retriever, queries, k)
    by_id = {q.id: q for q in queries} if is_answer else None
    return build_groups(queries, qrels, drop_positives(run, qrels, is_answer, by_id))
