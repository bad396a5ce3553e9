"""Training pairs from a corpus alone: ICT pseudo-queries and independent crops.

- **ICT** (Inverse Cloze Task; Lee, Chang and Toutanova, ACL 2019, §5; the retriever
  pretraining of Sachan et al. 2021, from which AR2's NQ recipe starts): a sentence of a
  document is the query and the rest of the document its positive. With probability
  ``keep`` (0.1 in the paper) the sentence is left in, so that the model also learns that word
  overlap matters.
- **Independent cropping** (Contriever; Izacard et al., TMLR 2022, §3.1): two spans drawn
  independently from one document, each of a random share of its words, with each word
  deleted with a small probability, form a positive pair.

Everything is a pure function of the random generator passed in, so a step's pairs are a
function of ``(seed, step)`` as every batch of ``ar2 train`` is.

Example:
    >>> import random
    >>> doc = Doc("d1", "Cats eat fish. Dogs chase balls. Birds sing.", "Pets")
    >>> query, positive = ict_pair(doc, random.Random(1), keep=0.0)
    >>> query.text in doc.text and query.text not in positive.text
    True
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from ar2.types import Doc, Query

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")
"""Where a sentence ends: ., ! or ? then space, before a capital, a digit or a bracket."""

TASKS = ("ict", "crop")


def sentences(text: str) -> list[str]:
    """``text`` split into sentences (a rule, not a parser: abbreviations may split).

    Example:
        >>> sentences("It works. See Fig. 2 for the rest! Done")
        ['It works.', 'See Fig.', '2 for the rest!', 'Done']
    """
    return [s.strip() for s in SENTENCE_END.split(text) if s.strip()]


def ict_pair(doc: Doc, rng: random.Random, keep: float = 0.1) -> tuple[Query, Doc]:
    """An ICT pair from ``doc``: one of its sentences as the query, the document without it
    (with probability ``keep``: with it) as the positive, its title kept. A document of one
    sentence cannot give one: :func:`pseudo_pair` crops it instead.

    Example:
        >>> doc = Doc("d1", "One. Two. Three.")
        >>> ict_pair(doc, random.Random(0), keep=1.0)[1].text
        'One. Two. Three.'
    """
    parts = sentences(doc.text)
    if len(parts) < 2:
        raise ValueError(f"document {doc.id!r} has fewer than two sentences: no ICT pair")
    i = rng.randrange(len(parts))
    rest = parts if rng.random() < keep else parts[:i] + parts[i + 1 :]
    return Query(f"ict:{doc.id}", parts[i]), Doc(doc.id, " ".join(rest), doc.title)


def crop(words: Sequence[str], rng: random.Random, low: float, high: float, delete: float) -> str:
    """A random span of ``low``-``high`` of ``words`` (at least one word), each word of it
    deleted with probability ``delete`` (at least one kept).

    Example:
        >>> crop("a b c d e f g h i j".split(), random.Random(0), 0.3, 0.3, 0.0)
        'g h i'
    """
    n = len(words)
    length = max(1, round(rng.uniform(low, high) * n))
    start = rng.randrange(n - length + 1)
    span = words[start : start + length]
    kept = [w for w in span if rng.random() >= delete]
    return " ".join(kept or span[:1])


def crop_pair(
    doc: Doc, rng: random.Random, low: float = 0.1, high: float = 0.5, delete: float = 0.1
) -> tuple[Query, Doc]:
    """Two independent crops of ``doc``'s title and text: the first as the query, the second
    as the positive.

    Example:
        >>> q, d = crop_pair(Doc("d1", "a b c d e f g h i j"), random.Random(0))
        >>> set(q.text.split()) <= set("abcdefghij") and d.id == "d1"
        True
    """
    words = doc.full_text().split() or [doc.id]
    first = crop(words, rng, low, high, delete)
    second = crop(words, rng, low, high, delete)
    return Query(f"crop:{doc.id}", first), Doc(doc.id, second)


def pseudo_pair(
    doc: Doc,
    rng: random.Random,
    ict_fraction: float = 0.5,
    keep: float = 0.1,
    crops: tuple[float, float, float] = (0.1, 0.5, 0.1),
) -> tuple[Query, Doc]:
    """An ICT pair with probability ``ict_fraction`` (when ``doc`` has two sentences or more),
    else a crop pair; ``crops`` is ``(low, high, delete)`` of :func:`crop_pair`.

    Example:
        >>> q, _ = pseudo_pair(Doc("d1", "Only one sentence here"), random.Random(0), 1.0)
        >>> q.id
        'crop:d1'
    """
    if rng.random() < ict_fraction and len(sentences(doc.text)) >= 2:
        return ict_pair(doc, rng, keep)
    return crop_pair(doc, rng, *crops)
