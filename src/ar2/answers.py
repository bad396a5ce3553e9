"""DPR answer matching: does a passage contain one of a question's answers?

One implementation for the two places that ask: :mod:`ar2.mining` drops answer-bearing
candidates from the hard negatives of QA queries, and :mod:`ar2.evaluate` scores DPR's top-k
answer accuracy. It re-implements ``has_answer(..., match_type="string")`` of DPR (Karpukhin et
al., 2020, "Dense Passage Retrieval for Open-Domain Question Answering"; ``dpr/utils/
tokenizers.py`` ``SimpleTokenizer`` and ``dpr/data/qa_validation.py``): text and answers are
NFD-normalised, tokenised with ``[\\p{L}\\p{N}\\p{M}]+|[^\\p{Z}\\p{C}]`` (``regex`` package,
IGNORECASE | UNICODE | MULTILINE) and lower-cased; an answer matches when its tokens occur
contiguously in the text's tokens. So case, whitespace and the NFC/NFD form do not matter,
punctuation is a token of its own (``"U.S."`` is ``u . s .``), accents are kept, and articles
are kept (DPR's string mode does not drop them: ``"The Beatles"`` is not found in ``"Beatles"``).

Only the standard library and ``regex`` (imported on first use) are needed: no torch.

Example:
    >>> has_answer("The Eiffel Tower is in PARIS.", ["paris"])
    True
    >>> dpr_tokens("Hello, U.S.!")
    ('hello', ',', 'u', '.', 's', '.', '!')
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from ar2._optional import require
from ar2.types import Query

AnswerTokens = list[tuple[str, ...]]
"""The token sequences of a query's answers (:func:`answer_tokens`)."""


@lru_cache(maxsize=1)
def _token_pattern() -> Any:
    """DPR SimpleTokenizer's pattern: runs of letters/digits/marks, or any other visible char."""
    regex = require("regex", "eval")
    return regex.compile(
        r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])",
        flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE,
    )


def dpr_tokens(text: str) -> tuple[str, ...]:
    """NFD-normalise, tokenise with DPR's SimpleTokenizer and lower-case (``uncased=True``).

    Example:
        >>> dpr_tokens("Café au lait")
        ('cafe\u0301', 'au', 'lait')
    """
    normalised = unicodedata.normalize("NFD", text)
    return tuple(m.group().lower() for m in _token_pattern().finditer(normalised))


def answer_tokens(answers: Sequence[str]) -> AnswerTokens:
    """Tokenised answers; answers without any token are dropped (DPR would match them).

    Example:
        >>> answer_tokens(["New York", " ", "NYC"])
        [('new', 'york'), ('nyc',)]
    """
    return [tokens for tokens in map(dpr_tokens, answers) if tokens]


def contains_answer(tokens: Sequence[str], answers: AnswerTokens) -> bool:
    """Whether any of ``answers`` occurs in ``tokens`` as a contiguous token sequence.

    Example:
        >>> contains_answer(dpr_tokens("I love New York"), answer_tokens(["new york"]))
        True
    """
    for answer in answers:
        n = len(answer)
        if any(tuple(tokens[i : i + n]) == answer for i in range(len(tokens) - n + 1)):
            return True
    return False


def has_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether ``text`` contains one of ``answers``, as DPR's ``has_answer`` in string mode.

    One deviation from DPR: an answer with no token never matches (in DPR an empty answer
    matches every text).

    Example:
        >>> has_answer("The Eiffel Tower is in PARIS.", ["paris"])
        True
        >>> has_answer("Two cats sat.", ["cat"])
        False
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not a single string")
    return contains_answer(dpr_tokens(text), answer_tokens(answers))


def answer_checker(text_of: Callable[[str], str]) -> Callable[[Query, str], bool]:
    """``is_answer(query, doc_id)``: whether the doc's text (``text_of(doc_id)``) contains one
    of ``query.answers`` (:func:`has_answer`); a query without answers matches nothing. Each
    query's answers are tokenised once.

    Example:
        >>> texts = {"d1": "Paris is in France.", "d2": "Berlin."}
        >>> is_answer = answer_checker(texts.__getitem__)
        >>> q = Query("q1", "capital of France?", ("Paris",))
        >>> is_answer(q, "d1"), is_answer(q, "d2"), is_answer(Query("q2", "?"), "d1")
        (True, False, False)
    """
    tokenised: dict[tuple[str, ...], AnswerTokens] = {}

    def is_answer(query: Query, doc_id: str) -> bool:
        if query.answers not in tokenised:
            tokenised[query.answers] = answer_tokens(query.answers)
        answers = tokenised[query.answers]
        return bool(answers) and contains_answer(dpr_tokens(text_of(doc_id)), answers)

    return is_answer
