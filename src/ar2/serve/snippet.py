"""Snippets: the stretch of a document that holds the most of the query's words."""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

_WORD = re.compile(r"\w+")
_BEFORE_PARTIAL_WORD = re.compile(r"(?s)(.*\W)\w+")  # a window cut inside its last word
ELLIPSIS = "…"
MAX_SCAN = 20_000  # characters searched for query words (a snippet of a book opens early)


def snippet(text: str, query: str, chars: int = 240) -> str:
    """At most ``chars`` characters of ``text`` (plus the ``…`` marks of cuts), cut at word
    boundaries, chosen to hold the most distinct query words (searched for in the first
    ``MAX_SCAN`` characters). A window starts at the text's start or at a query word (the
    earliest wins ties), so the snippet opens on what matched.

    Example:
        >>> text = "Dogs bark at night. Birds sing at dawn. Cats eat fish every day."
        >>> snippet(text, "what do cats eat", 30)
        '… Cats eat fish every day.'
        >>> snippet("short text", "anything")
        'short text'
    """
    text = text.strip()
    if len(text) <= chars:
        return text
    found = _occurrences(text[:MAX_SCAN], query)
    begin = _best_start(found, chars)
    stop = min(len(text), begin + chars)
    window = text[begin:stop]
    if stop < len(text) and (cut := _BEFORE_PARTIAL_WORD.fullmatch(window)):
        window = cut.group(1)
    window = window.rstrip() or text[begin:stop]  # no word boundary to cut at: cut anyway
    tail = f" {ELLIPSIS}" if begin + len(window) < len(text) else ""
    return f"{ELLIPSIS} " * (begin > 0) + window + tail


def _occurrences(text: str, query: str) -> list[tuple[int, int, str]]:
    """``(start, end, word)`` of every whole-word, case-insensitive query word in ``text``."""
    words = tuple(sorted({w.lower() for w in _WORD.findall(query)}))
    if not words:
        return []
    lower = text.lower()
    if len(lower) == len(text):  # offsets still match (twice as fast as re.IGNORECASE)
        return [(m.start(), m.end(), m.group()) for m in _pattern(words, 0).finditer(lower)]
    pattern = _pattern(words, re.IGNORECASE)
    return [(m.start(), m.end(), m.group().lower()) for m in pattern.finditer(text)]


@lru_cache(maxsize=256)
def _pattern(words: tuple[str, ...], flags: int) -> re.Pattern[str]:
    longest_first = sorted(words, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(map(re.escape, longest_first)) + r")\b", flags)


def _best_start(found: list[tuple[int, int, str]], chars: int) -> int:
    """The start (0 or an occurrence) whose window of ``chars`` holds the most distinct words:
    one pass of a sliding window over the occurrences, in text order."""
    best, best_count = 0, len({w for _, end, w in found if end <= chars})
    inside: Counter[str] = Counter()
    last = 0  # occurrences [first, last) lie in the current window
    for first, (start, _, word) in enumerate(found):
        while last < len(found) and found[last][1] <= start + chars:
            inside[found[last][2]] += 1
            last += 1
        if len(inside) > best_count:
            best, best_count = start, len(inside)
        if last > first:  # the window held this occurrence: slide past it
            inside[word] -= 1
            if not inside[word]:
                del inside[word]
        else:
            last = first + 1
    return best
