"""Hard-negative mining: ``retrieve_candidates → drop_positives → sample_negatives``.

The AR2 recipe (spec §4.1, §10.5): retrieve the top-K documents of every training query with the
current retriever, remove the positives (qrels with grade > 0 and, for QA data, documents that
contain an answer), keep the rest as the query's negative pool, and sample n negatives from the
pool uniformly without replacement every time the query is drawn (tiling when the pool is
smaller than n). Queries with no positive or an empty pool are dropped.

``ar2 train`` drops the answer-bearing candidates whenever a training query carries answers
(:func:`answer_check`, DPR's ``has_answer`` from :mod:`ar2.answers` on a document's title and
text) and records how many in the groups' manifest (:func:`write_mined`).

Example:
    >>> from ar2.types import Hit
    >>> run = {"q1": [Hit("d1", 3.0), Hit("d2", 2.0), Hit("d3", 1.0)]}
    >>> drop_positives(run, {"q1": {"d1": 1, "d3": 0}})
    {'q1': (['d2', 'd3'], ['d1'])}
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ar2.answers import answer_checker
from ar2.data.training import TrainingGroup, write_groups
from ar2.pipeline import Retriever
from ar2.types import Doc, Hit, Qrels, Query, Run

log = logging.getLogger(__name__)

ANSWER_MATCH = "DPR has_answer (string mode) on the document's title + text"
"""How an answer-bearing candidate is recognised, as recorded in a manifest."""

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


Filtered = dict[str, list[tuple[str, str]]]
"""``query_id -> [(filter, doc_id), ...]``: the candidates a false-negative filter dropped."""

FILTERS = ("rank_window", "relative_margin")
"""The false-negative filters, in the order they apply."""


@dataclass(frozen=True)
class FalseNegativeFilter:
    """Drop the candidates most likely to be unjudged positives, as sentence-transformers'
    ``mine_hard_negatives`` does (its ``range_min`` and ``relative_margin``).

    Attributes:
        rank_start: the candidates at ranks 1..``rank_start`` of the retriever's list (positives
            counted) are no negatives (``"rank_window"``); 0 keeps them.
        relative_margin: ``m``: a candidate scored above ``(1 - m) x`` the best positive's score
            is no negative (``"relative_margin"``); ``None`` keeps them. Scores are taken to be
            positive (cosine, BM25), as in sentence-transformers.
        positive_score: the retriever's score of a query's positives that it did not retrieve,
            ``(query, doc_ids) -> best score``; needed with ``relative_margin``.

    Example:
        >>> from ar2.types import Hit
        >>> run = {"q1": [Hit("d1", 0.9), Hit("d2", 0.88), Hit("d3", 0.5), Hit("d4", 0.4)]}
        >>> pools = drop_positives(run, {"q1": {"d3": 1}})
        >>> flt = FalseNegativeFilter(rank_start=1, relative_margin=0.1)
        >>> flt.apply(run, pools, {"q1": {"d3": 1}})[1]
        {'q1': [('rank_window', 'd1'), ('relative_margin', 'd2')]}
    """

    rank_start: int = 0
    relative_margin: float | None = None
    positive_score: Callable[[Query, Sequence[str]], float] | None = None

    @property
    def active(self) -> bool:
        return self.rank_start > 0 or self.relative_margin is not None

    def apply(
        self, run: Run, pools: Pools, qrels: Qrels, queries: Mapping[str, Query] | None = None
    ) -> tuple[Pools, Filtered]:
        """``pools`` without the dropped candidates, and what each filter dropped."""
        kept: Pools = {}
        filtered: Filtered = {}
        for qid, (pool, removed) in pools.items():
            hits = run.get(qid, [])
            rank = {h.doc_id: i for i, h in enumerate(hits, start=1)}
            score = {h.doc_id: h.score for h in hits}
            positives = [d for d, grade in qrels.get(qid, {}).items() if grade > 0]
            floor = self._margin_floor(hits, positives, (queries or {}).get(qid))
            dropped = []
            for doc in pool:
                if rank.get(doc, len(hits) + 1) <= self.rank_start:
                    dropped.append(("rank_window", doc))
                elif floor is not None and score.get(doc, -math.inf) > floor:
                    dropped.append(("relative_margin", doc))
            gone = {doc for _, doc in dropped}
            kept[qid] = ([d for d in pool if d not in gone], removed)
            filtered[qid] = dropped
        return kept, filtered

    def _margin_floor(
        self, hits: Sequence[Hit], positives: Sequence[str], query: Query | None
    ) -> float | None:
        """``(1 - m) x`` the best positive's score (scored by ``positive_score`` when none was
        retrieved); ``None`` when the filter is off or there is nothing to compare with."""
        if self.relative_margin is None or not positives:
            return None
        wanted = set(positives)
        retrieved = [h.score for h in hits if h.doc_id in wanted]
        if retrieved:
            best = max(retrieved)
        elif self.positive_score is not None and query is not None:
            best = self.positive_score(query, positives)
        else:
            return None
        return (1.0 - self.relative_margin) * best

    def record(self, groups: Sequence[TrainingGroup]) -> dict[str, Any]:
        """The manifest entry ``false_negatives``: the settings and how many candidates each
        filter dropped over the groups written."""
        if not self.active:
            return {"filtered": False}
        counts = {name: 0 for name in FILTERS}
        for g in groups:
            for name, _ in g.filtered:
                counts[name] += 1
        return {
            "filtered": True,
            "rank_start": self.rank_start,
            "relative_margin": self.relative_margin,
            "dropped": counts,
            "groups_with_drops": sum(bool(g.filtered) for g in groups),
        }


def false_negative_filter(
    rank_start: int, relative_margin: float | None, retriever: Any, docs: Mapping[str, Doc]
) -> FalseNegativeFilter:
    """The filter of a run's mining: positives it did not retrieve are scored by
    ``retriever.score(query, docs)`` (BM25 or dense, :mod:`ar2.pipeline`)."""

    def positive_score(query: Query, doc_ids: Sequence[str]) -> float:
        return float(max(retriever.score(query, [docs[d] for d in doc_ids])))

    return FalseNegativeFilter(rank_start, relative_margin, positive_score)


def build_groups(
    queries: Sequence[Query], qrels: Qrels, pools: Pools, filtered: Filtered | None = None
) -> list[TrainingGroup]:
    """Training groups for the queries that have a positive and a non-empty negative pool."""
    groups = []
    for query in queries:
        positives = tuple(d for d, grade in qrels.get(query.id, {}).items() if grade > 0)
        pool, removed = pools.get(query.id, ([], []))
        dropped = tuple((filtered or {}).get(query.id, ()))
        if positives and pool:
            groups.append(TrainingGroup(query, positives, tuple(pool), tuple(removed), dropped))
    return groups


def mine(
    retriever: Retriever,
    queries: Sequence[Query],
    qrels: Qrels,
    k: int,
    is_answer: Callable[[Query, str], bool] | None = None,
    filters: FalseNegativeFilter | None = None,
) -> list[TrainingGroup]:
    """Retrieve the top ``k``, drop the positives, and build the training groups.

    With ``is_answer`` (:func:`answer_check`), the candidates that contain one of their query's
    answers are dropped from the negatives too, and listed in the group's ``excluded``. With
    ``filters``, the likely false negatives are dropped as well, listed in ``filtered``.

    Example:
        >>> from ar2.types import Hit
        >>> class Fixed:  # a retriever with a fixed ranking
        ...     def retrieve(self, queries, k):
        ...         return {q.id: [Hit("d1", 3.0), Hit("d2", 2.0), Hit("d3", 1.0)] for q in queries}
        >>> docs = {d: Doc(d, t) for d, t in [("d1", "Paris"), ("d2", "in Paris"), ("d3", "Rome")]}
        >>> queries = [Query("q1", "capital of France?", ("Paris",))]
        >>> [group] = mine(Fixed(), queries, {"q1": {"d1": 1}}, 3, answer_check(queries, docs))
        >>> group.positives, group.negatives, group.excluded
        (('d1',), ('d3',), ('d1', 'd2'))
    """
    run = retrieve_candidates(retriever, queries, k)
    by_id = {q.id: q for q in queries}
    pools = drop_positives(run, qrels, is_answer, by_id if is_answer else None)
    if filters is None or not filters.active:
        return build_groups(queries, qrels, pools)
    return build_groups(queries, qrels, *filters.apply(run, pools, qrels, by_id))


def answer_check(
    queries: Sequence[Query], docs: Mapping[str, Doc]
) -> Callable[[Query, str], bool] | None:
    """The ``is_answer`` test of :func:`mine` for ``queries``: DPR's ``has_answer`` on a
    document's ``full_text()`` when any query carries answers (QA data), else ``None``.

    Example:
        >>> docs = {"d1": Doc("d1", "Paris is in France."), "d2": Doc("d2", "Berlin.")}
        >>> check = answer_check([Query("q1", "capital of France?", ("Paris",))], docs)
        >>> check(Query("q1", "capital of France?", ("Paris",)), "d1")
        True
        >>> answer_check([Query("q1", "what do cats eat")], docs) is None
        True
    """
    if not any(query.answers for query in queries):
        return None
    return answer_checker(lambda doc_id: docs[doc_id].full_text())


def answer_record(groups: Sequence[TrainingGroup], dropped: bool) -> dict[str, Any]:
    """The manifest entry ``answers``: were answer-bearing candidates dropped from the
    negatives (``dropped``: the queries carry answers), how, and how many (the candidates
    removed from the groups' pools that are not qrels positives, summed over the groups).

    Example:
        >>> g = TrainingGroup(Query("q1", "x", ("a",)), ("d1",), ("d3",), ("d1", "d2"))
        >>> answer_record([g], True)["negatives_dropped"]
        1
        >>> answer_record([g], False)
        {'dropped': False, 'reason': 'no training query carries answers'}
    """
    if not dropped:
        return {"dropped": False, "reason": "no training query carries answers"}
    per_group = [len(set(g.excluded) - set(g.positives)) for g in groups]
    return {
        "dropped": True,
        "match": ANSWER_MATCH,
        "negatives_dropped": sum(per_group),
        "groups_with_drops": sum(n > 0 for n in per_group),
    }


def write_mined(
    folder: Path,
    groups: Sequence[TrainingGroup],
    provenance: dict[str, Any],
    dropped: bool,
    filters: FalseNegativeFilter | None = None,
) -> None:
    """:func:`~ar2.data.training.write_groups` with :func:`answer_record` in the manifest under
    ``answers`` and the false-negative filters' counts under ``false_negatives``; when answers
    were dropped, or a filter dropped candidates, one log line says how many."""
    flt = (filters or FalseNegativeFilter()).record(groups)
    if flt["filtered"]:
        where = f"{folder.parent.name}/{folder.name}"
        log.info("%s: the false-negative filters dropped %s candidates (in %d queries)",
                 where, flt["dropped"], flt["groups_with_drops"])  # fmt: skip
    provenance = provenance | {"false_negatives": flt}
    record = answer_record(groups, dropped)
    if dropped:
        log.info(
            "%s/%s: the training queries carry answers, so %d answer-bearing candidates (in %d "
            "queries) were dropped from the negatives (%s)",
            folder.parent.name, folder.name, record["negatives_dropped"],
            record["groups_with_drops"], ANSWER_MATCH,
        )  # fmt: skip
    write_groups(folder, groups, provenance | {"answers": record})
