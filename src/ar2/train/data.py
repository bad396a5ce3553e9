"""The data of a training run: corpus, train queries, dev queries (a split or a held-out slice)."""

from __future__ import annotations

import hashlib
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


def load_train_data(data_dir: Path, dev_queries: int, seed: int, out: Path) -> TrainData:
    """Load train (and dev, test) splits; without a dev split hold out a seeded train slice.

    The held-out ids are written to ``out/dev_split.json`` so the split is on record.
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
        train, dev = _hold_out(train, dev_queries, seed)
        dev_qrels = {q.id: train_qrels.pop(q.id) for q in dev}
        record = {
            "source": f"seeded hold-out of train (seed {seed})",
            "queries": [q.id for q in dev],
        }
    distributed.on_main(atomic_write_json, out / "dev_split.json", record)
    docs = {d.id: d for d in corpus}
    return TrainData(corpus, docs, train, train_qrels, dev, dev_qrels, test, test_qrels)


def data_record(data_dir: Path) -> dict[str, Any]:
    """Where a run's data is and what it holds: the size and SHA-256 of ``corpus.jsonl``,
    ``queries.jsonl`` and every ``qrels/*.tsv`` (stored in the run's ``config.json``).

    Example:
        >>> import pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "corpus.jsonl").write_text("{}")
        >>> data_record(d)["files"]["corpus.jsonl"]["size"]
        2
    """
    names = ["corpus.jsonl", "queries.jsonl"]
    if (data_dir / "qrels").is_dir():
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
    if n >= len(train):
        raise Ar2Error(f"dev_queries = {n} but only {len(train)} training queries. Fix: lower it")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return [q for i, q in enumerate(train) if i not in held], [train[i] for i in sorted(held)]
