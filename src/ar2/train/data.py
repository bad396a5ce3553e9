"""The data of a training run: corpus, train queries, dev queries (a split or a held-out slice)."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ar2 import distributed
from ar2._io import atomic_write_json
from ar2.data.beir import available_splits, load_beir, load_qrels, load_queries
from ar2.errors import Ar2Error
from ar2.types import Doc, Qrels, Query


@dataclass
class TrainData:
    """Everything a run reads from its BEIR folder, loaded once."""

    corpus: list[Doc]
    docs: dict[str, Doc]
    train: list[Query]
    train_qrels: Qrels
    dev: list[Query]
    dev_qrels: Qrels
    test: list[Query]
    test_qrels: Qrels


MIN_DEV_QUERIES = 5
"""The smallest dev slice held out of train (unless ``dev_queries`` asks for fewer)."""


def dev_size(train: int, dev_queries: int, dev_fraction: float | None) -> tuple[int, str]:
    """How many of ``train`` training queries to hold out as dev, and the rule, stated:
    ``min(dev_queries, max(5, round(dev_fraction x train)))``; ``dev_fraction=None``: exactly
    ``dev_queries``.

    Example:
        >>> dev_size(809, 100, 0.125)[0], dev_size(40, 100, 0.125)[0], dev_size(809, 100, None)[0]
        (100, 5, 100)
        >>> dev_size(40, 100, 0.125)[1]
        'min(dev_queries 100, max(5, round(0.125 x 40 training queries))) = 5'
    """
    if dev_fraction is None:
        return dev_queries, f"dev_queries = {dev_queries}"
    n = min(dev_queries, max(MIN_DEV_QUERIES, round(dev_fraction * train)))
    rule = f"round({dev_fraction:g} x {train} training queries)"
    return n, f"min(dev_queries {dev_queries}, max({MIN_DEV_QUERIES}, {rule})) = {n}"


def load_train_data(
    data_dir: Path, dev_queries: int, seed: int, out: Path, dev_fraction: float | None = None
) -> TrainData:
    """Load train (and dev, test) splits; without a dev split hold out a seeded train slice of
    :func:`dev_size` queries.

    The held-out ids and the rule are written to ``out/dev_split.json`` so the split is on
    record.
    """
    splits = available_splits(data_dir)
    if "train" not in splits:
        raise Ar2Error(
            f"{data_dir}: no qrels/train.tsv. Fix: training needs a train split (found {splits})"
        )
    corpus, train, train_qrels = load_beir(data_dir, "train")
    doc_ids = {d.id for d in corpus}
    test, test_qrels = _split(data_dir, "test", splits, doc_ids)
    if "dev" in splits:
        dev, dev_qrels = _split(data_dir, "dev", splits, doc_ids)
        record = {"source": "qrels/dev.tsv", "queries": [q.id for q in dev]}
    else:
        n, rule = dev_size(len(train), dev_queries, dev_fraction)
        train, dev = _hold_out(train, n, seed)
        dev_qrels = {q.id: train_qrels.pop(q.id) for q in dev}
        record = {
            "source": f"seeded hold-out of train (seed {seed})",
            "rule": rule,
            "queries": [q.id for q in dev],
        }
    _same_split(out / "dev_split.json", record)
    distributed.on_main(atomic_write_json, out / "dev_split.json", record)
    docs = {d.id: d for d in corpus}
    return TrainData(corpus, docs, train, train_qrels, dev, dev_qrels, test, test_qrels)


def dev_split_qrels(data_dir: Path, record: dict[str, Any]) -> Qrels:
    """The judgements of a run's dev queries, from its ``dev_split.json`` ``record``:
    ``qrels/dev.tsv``, or those of the train queries it held out."""
    if record.get("source") == "qrels/dev.tsv":
        return load_qrels(data_dir / "qrels" / "dev.tsv")
    train = load_qrels(data_dir / "qrels" / "train.tsv")
    return {q: train[q] for q in record["queries"] if q in train}


def _same_split(file: Path, record: dict[str, Any]) -> None:
    """Refuse a dev split other than the one a run (resumed or warm-started) already holds: its
    models were trained without the dev queries, which must stay out of training."""
    if not file.is_file():
        return
    try:
        before = json.loads(file.read_text(encoding="utf-8")).get("queries")
    except (OSError, ValueError, AttributeError):
        before = None
    if before is not None and before != record["queries"]:
        raise Ar2Error(
            f"{file}: the run's dev split ({len(before)} queries) differs from this one's "
            f"({len(record['queries'])}: {record.get('rule', record['source'])}). Fix: resume "
            "with the run's dev settings (dev_queries, dev_fraction, seed), or start a new --out"
        )


def train_query_count(data_dir: Path) -> tuple[int, bool]:
    """How many queries ``qrels/train.tsv`` judges, and whether a ``qrels/dev.tsv`` exists
    (then nothing is held out); read without the corpus, before a run starts."""
    qrels = load_qrels(data_dir / "qrels" / "train.tsv")
    return len(qrels), (data_dir / "qrels" / "dev.tsv").is_file()


def data_record(data_dir: Path, corpus_only: bool = False) -> dict[str, Any]:
    """Where a run's data is and what it holds: the size and SHA-256 of ``corpus.jsonl``,
    ``queries.jsonl`` and every ``qrels/*.tsv`` (stored in the run's ``config.json``);
    ``corpus_only``: of ``corpus.jsonl`` alone (``ar2 pretrain`` reads nothing else).

    Example:
        >>> import pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "corpus.jsonl").write_text("{}")
        >>> data_record(d)["files"]["corpus.jsonl"]["size"]
        2
    """
    names = ["corpus.jsonl"] + ([] if corpus_only else ["queries.jsonl"])
    if (data_dir / "qrels").is_dir() and not corpus_only:
        names += sorted(f"qrels/{p.name}" for p in (data_dir / "qrels").glob("*.tsv"))
    files = {}
    for name in names:
        path = data_dir / name
        if path.is_file():
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            files[name] = {"size": path.stat().st_size, "sha256": digest}
    return {"path": str(data_dir.resolve()), "files": files}


def data_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The files whose presence, size or hash differ between two :func:`data_record`s.

    Example:
        >>> a = {"files": {"corpus.jsonl": {"size": 1, "sha256": "x"}}}
        >>> data_differences(a, {"files": {}})
        ['corpus.jsonl']
    """
    before, after = saved.get("files", {}), now.get("files", {})
    return sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))


def _split(
    data_dir: Path, split: str, splits: list[str], doc_ids: set[str]
) -> tuple[list[Query], Qrels]:
    if split not in splits:
        return [], {}
    queries = load_queries(data_dir / "queries.jsonl")
    qrels = load_qrels(data_dir / "qrels" / f"{split}.tsv", {q.id for q in queries}, doc_ids)
    return [q for q in queries if q.id in qrels], qrels


def _hold_out(train: list[Query], n: int, seed: int) -> tuple[list[Query], list[Query]]:
    """Split ``train`` into (train, dev) with ``n`` seeded dev queries; an error names the
    flag that lowers ``n`` when ``train`` is too small.

    Example:
        >>> qs = [Query(str(i), "q") for i in range(3)]
        >>> [len(part) for part in _hold_out(qs, 1, seed=0)]
        [2, 1]
        >>> _hold_out(qs, 3, seed=0)
        Traceback (most recent call last):
        ar2.errors.Ar2Error: a dev slice of 3 queries leaves none of the 3 training queries. ...
    """
    if n >= len(train):
        raise Ar2Error(
            f"a dev slice of {n} queries leaves none of the {len(train)} training queries. "
            "Fix: pass "
            f"--set dev_queries=N with N < {len(train)} (or a config with dev_queries lower), "
            "or add a qrels/dev.tsv"
        )
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return [q for i, q in enumerate(train) if i not in held], [train[i] for i in sorted(held)]
