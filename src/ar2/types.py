"""The shared vocabulary: every loader, retriever, ranker and metric speaks these types.

Ids are always ``str``. ``Qrels`` and ``Run`` are plain dicts so they convert cheaply to the
dict-of-dict shape that ir_measures and pytrec_eval expect.

Example:
    >>> from ar2.types import Doc, Hit, Query
    >>> Doc("d1", "Cats eat fish.", title="Cats").full_text()
    'Cats Cats eat fish.'
    >>> Query("q1", "what do cats eat").id
    'q1'
    >>> Hit("d1", 3.5)
    Hit(doc_id='d1', score=3.5)
"""

from __future__ import annotations

from typing import NamedTuple


class Doc(NamedTuple):
    """One document of a corpus: ``id``, body ``text`` and an optional ``title``."""

    id: str
    text: str
    title: str = ""

    def full_text(self, sep: str = " ") -> str:
        """Title and text joined by ``sep`` (BEIR's convention), stripped."""
        return f"{self.title}{sep}{self.text}".strip() if self.title else self.text.strip()


class Query(NamedTuple):
    """One query: ``id``, ``text`` and, for QA data, the ``answers`` strings (DPR style)."""

    id: str
    text: str
    answers: tuple[str, ...] = ()


class Hit(NamedTuple):
    """One retrieved document for a query, with its score (higher is better)."""

    doc_id: str
    score: float


Qrels = dict[str, dict[str, int]]
"""Relevance judgements: ``query_id -> {doc_id: grade}``. Grades are kept as given."""

Run = dict[str, list[Hit]]
"""A ranking per query: ``query_id -> hits`` sorted by descending score."""
