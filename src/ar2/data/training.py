"""Training groups: a query, its positive documents and its pool of hard negatives.

A group keeps the whole negative *pool* (in retrieval order); negatives are sampled from it each
time the group is drawn (:func:`ar2.mining.sample_negatives`), as in the AR2 code (spec §4.1.7).
Groups are stored as JSONL next to a ``manifest.json`` recording how they were mined.

Example:
    >>> import tempfile, pathlib
    >>> g = TrainingGroup(Query("q1", "what do cats eat"), ("d1",), ("d7", "d3"), ("d9",))
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "groups"
    >>> write_groups(out, [g], {"round": 0})
    >>> read_groups(out) == [g]
    True
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ar2 import __version__
from ar2._io import atomic_dir, atomic_write_json, atomic_write_text
from ar2.errors import DataError
from ar2.types import Query

GROUPS_FILE = "groups.jsonl"


class TrainingGroup(NamedTuple):
    """One training query with ``positives`` and a ``negatives`` pool (doc ids, rank order).

    ``excluded`` lists the retrieved candidates removed from the pool (mining provenance): the
    positives found among them and, for QA data, the documents containing an answer.
    ``filtered`` lists the candidates the false-negative filters dropped, as
    ``(filter, doc_id)`` pairs in rank order (:class:`ar2.mining.FalseNegativeFilter`).
    """

    query: Query
    positives: tuple[str, ...]
    negatives: tuple[str, ...]
    excluded: tuple[str, ...] = ()
    filtered: tuple[tuple[str, str], ...] = ()


def write_groups(
    path: str | Path, groups: Sequence[TrainingGroup], provenance: dict[str, Any]
) -> None:
    """Write ``groups.jsonl`` and ``manifest.json`` (``provenance`` plus counts) atomically."""
    lines = (json.dumps(_to_json(g), ensure_ascii=False) + "\n" for g in groups)
    with atomic_dir(path) as tmp:
        atomic_write_text(tmp / GROUPS_FILE, "".join(lines))
        manifest = {"kind": "training_groups", "ar2_version": __version__, "groups": len(groups)}
        atomic_write_json(tmp / "manifest.json", manifest | provenance)


def read_groups(path: str | Path) -> list[TrainingGroup]:
    """Read the groups written by :func:`write_groups`."""
    file = Path(path) / GROUPS_FILE
    groups = []
    with open(file, encoding="utf-8") as f:
        for no, line in enumerate(f, start=1):
            try:
                groups.append(_from_json(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DataError(
                    file, no, f"not a training group ({err})", "re-run the mining"
                ) from None
    return groups


def _to_json(group: TrainingGroup) -> dict[str, Any]:
    return {
        "query_id": group.query.id,
        "query": group.query.text,
        "positives": list(group.positives),
        "negatives": list(group.negatives),
        "excluded": list(group.excluded),
    } | ({"filtered": [list(pair) for pair in group.filtered]} if group.filtered else {})


def _from_json(obj: dict[str, Any]) -> TrainingGroup:
    return TrainingGroup(
        Query(str(obj["query_id"]), obj["query"]),
        _ids(obj["positives"]),
        _ids(obj["negatives"]),
        _ids(obj.get("excluded", [])),
        tuple((str(name), str(doc)) for name, doc in obj.get("filtered", [])),
    )


def _ids(values: Iterable[Any]) -> tuple[str, ...]:
    return tuple(str(v) for v in values)
