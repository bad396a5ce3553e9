"""Snippets: the stretch of a document that holds the most of the query's words."""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"\w+")
_PUNCT = re.compile(r"[^\w\s]*")  # punctuation right after the last word stays with it
ELLIPSIS = "…"


def snippet(text: str, query: str, chars: int = 240) -> str:
    """At most ``chars`` characters of ``text``, cut at word boundaries, chosen to hold the most
    distinct query words; ``…`` marks a cut. A window starts at the text's start or at a query
    word (the earliest wins ties), so the snippet opens on what matched.

    Example:
        >>> text = "Dogs bark at night. Birds sing at dawn. Cats eat fish every day."
        >>> snippet(text, "what do cats eat", 30)
        '… Cats eat fish every day.'
        >>> snippet("short text", "anything")
        'short text'
    """
    if len(text) <= chars:
        return text
    words = list(_WORD.finditer(text))
    if not words:
        return text[:chars] + ELLIPSIS
    wanted = {w.lower() for w in _WORD.findall(query)}
    start, end = _best_window(words, wanted, chars)
    begin, stop = words[start].start(), words[end].end()
    tail = _PUNCT.match(text, stop)
    stop = min(tail.end() if tail else stop, begin + chars)
    return f"{ELLIPSIS} " * (begin > 0) + text[begin:stop] + f" {ELLIPSIS}" * (stop < len(text))


def _best_window(words: list[re.Match[str]], wanted: set[str], chars: int) -> tuple[int, int]:
    """``(first, last)`` word of the window of at most ``chars`` with the most wanted words."""
    seen: Counter[str] = Counter()
    best, best_count, last = (0, 0), -1, -1

    def take(i: int, step: int) -> None:
        word = words[i].group().lower()
        if word in wanted:
            seen[word] += step
            if not seen[word]:
                del seen[word]

    for first in range(len(words)):
        if last < first:  # a word longer than the window stands alone (clipped later)
            last = first
            take(last, 1)
        while last + 1 < len(words) and words[last + 1].end() - words[first].start() <= chars:
            last += 1
            take(last, 1)
        opens = first == 0 or words[first].group().lower() in wanted
        if opens and len(seen) > best_count:
            best, best_count = (first, last), len(seen)
        take(first, -1)
    return best
