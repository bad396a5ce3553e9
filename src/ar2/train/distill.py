"""``run_distill``: a smaller query tower that gives a run's query vectors (``ar2 distill-query``).

ScalingNote ("Scaling up Retrievers with Large Language Models for Real-World Dense
Retrieval") distils the query tower alone into a smaller model: documents are encoded once,
offline, by the large tower, and only the query side must be fast. Here the student is the
run's query tower cut to ``layers`` of its transformer layers (:func:`kept_layers`), each
initialised from the teacher's, trained on :func:`ar2.losses.vector_distillation` to give the
teacher's vector of each text:

- the run's training queries (its dev queries left out: they measure the student);
- ``pseudo_queries`` sentences of the corpus (:func:`ar2.data.pseudo.sentences`), as ICT uses
  them as queries. No label is read.

The student is saved with the run's own document tower as a retriever with separate towers,
so the run's index serves it unchanged: ``ar2 serve RUN --retriever OUT/retriever``. The report
compares the teacher and the student on the run's dev queries and the test split (nDCG@10,
the same index, a paired t-test) and times one query's encoding by each.

Folder::

    distill.json  texts.jsonl  teacher.npy  metrics.jsonl  checkpoints/  retriever/
    report.json  report.md
"""

from __future__ import annotations

import copy
import json
import logging
import random
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ar2._io import (
    atomic_write_json,
    atomic_write_lines,
    atomic_write_npy,
    atomic_write_text,
)
from ar2._optional import require
from ar2._outdir import DISTILL_CONFIG
from ar2.config import DistillConfig
from ar2.data.pseudo import sentences
from ar2.encoders import BiEncoder
from ar2.errors import Ar2Error
from ar2.train.derived import derived_output, run_splits
from ar2.train.stage import MetricsLog, stage_record, train_stage
from ar2.types import Query

log = logging.getLogger("ar2.train")

STAGE = "distill-query"
MEASURE = "nDCG@10"


def kept_layers(total: int, keep: int) -> list[int]:
    """The ``keep`` layers of ``total`` the student starts from: evenly spread, the first and
    the last among them.

    Example:
        >>> kept_layers(6, 3), kept_layers(6, 2), kept_layers(6, 1), kept_layers(6, 6)
        ([0, 2, 5], [0, 5], [5], [0, 1, 2, 3, 4, 5])
    """
    if not 1 <= keep <= total:
        raise Ar2Error(f"layers = {keep}: the query tower has {total}. Fix: choose 1 to {total}")
    if keep == 1:
        return [total - 1]
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def student_tower(tower: Any, keep: int) -> Any:
    """A copy of a BERT-like ``tower`` with the layers of :func:`kept_layers` only."""
    torch = require("torch")
    layers = getattr(getattr(tower, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise Ar2Error(
            f"{type(tower).__name__} has no encoder.layer list to cut. Fix: distil a BERT-like "
            "encoder (BERT, MiniLM, RoBERTa)"
        )
    chosen = kept_layers(len(layers), keep)
    student = copy.deepcopy(tower)
    student.encoder.layer = torch.nn.ModuleList([student.encoder.layer[i] for i in chosen])
    student.config.num_hidden_layers = keep
    return student


def run_distill(
    run: Path, out: Path, cfg: DistillConfig, resume: bool = False, overwrite: bool = False
) -> dict:
    """Distil ``run``'s query tower into ``out`` (see the module); returns the report."""
    with derived_output(run, out, "distill", DISTILL_CONFIG, cfg, resume, overwrite) as (
        out,
        data_dir,
    ):
        teacher = BiEncoder.load(run / "retriever")
        texts = _texts(out, run, data_dir, cfg)
        targets = _teacher_vectors(out, teacher, texts)
        student = _train(out, teacher, texts, targets, cfg)
        return _report(out, run, data_dir, teacher, student, cfg)


def _texts(out: Path, run: Path, data_dir: Path, cfg: DistillConfig) -> list[str]:
    """The training queries (not the run's dev ones) and the pseudo-queries, kept on disk."""
    from ar2.data.beir import iter_corpus, load_qrels, load_queries

    file = out / "texts.jsonl"
    if file.is_file():
        return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
    dev = set(json.loads((run / "dev_split.json").read_text())["queries"])
    train = load_qrels(data_dir / "qrels" / "train.tsv")
    queries = [q.text for q in load_queries(data_dir / "queries.jsonl")
               if q.id in train and q.id not in dev]  # fmt: skip
    rng = random.Random(f"{cfg.seed}/pseudo-queries")
    stream = (
        s for d in iter_corpus(data_dir / "corpus.jsonl", warn=False) for s in sentences(d.text)
    )
    pseudo = reservoir(stream, cfg.pseudo_queries, rng)
    texts = queries + pseudo
    atomic_write_lines(file, (json.dumps(t, ensure_ascii=False) for t in texts))
    log.info("distilling on %d training queries and %d pseudo-queries", len(queries), len(pseudo))
    return texts


def reservoir(items: Iterable[str], k: int, rng: random.Random) -> list[str]:
    """A uniform sample of ``k`` of ``items`` in one pass, holding ``k`` (Vitter's algorithm R).

    Example:
        >>> reservoir(iter("abcdef"), 3, random.Random(0))
        ['f', 'b', 'c']
        >>> reservoir(iter("ab"), 3, random.Random(0))
        ['a', 'b']
    """
    kept: list[str] = []
    for i, item in enumerate(items):
        if i < k:
            kept.append(item)
        elif (j := rng.randrange(i + 1)) < k:
            kept[j] = item
    return kept


def _teacher_vectors(out: Path, teacher: BiEncoder, texts: list[str]) -> np.ndarray:
    file = out / "teacher.npy"
    if not file.is_file():
        atomic_write_npy(file, teacher.encode_queries(texts, progress=True))
    return np.load(file)


def _train(
    out: Path, teacher: BiEncoder, texts: list[str], targets: np.ndarray, cfg: DistillConfig
) -> BiEncoder:
    final = out / "retriever"
    if final.is_dir():
        return BiEncoder.load(final)
    torch = require("torch")
    from ar2 import losses
    from ar2.train import steps

    tower = student_tower(teacher.query_model, cfg.layers)
    student = BiEncoder(teacher.doc_model, teacher.tokenizer, teacher.config, tower,
                        source=teacher.source)  # fmt: skip
    size = cfg.stage.batch_size

    def loss(step: int) -> Any:
        rows = steps.epoch_picks(len(texts), size, cfg.seed, STAGE, step)
        vectors = student.embed_queries([texts[i] for i in rows])  # (B, dim)
        target = torch.from_numpy(targets[rows]).to(vectors.device)  # (B, dim)
        return losses.vector_distillation(student=vectors, teacher=target)

    stage_log = train_stage(out, STAGE, {"query": tower}, cfg.stage, loss, cfg)
    student.save(final)
    MetricsLog(out / "metrics.jsonl").write(stage_record(STAGE, 0, "query", stage_log))
    return BiEncoder.load(final)


def _report(
    out: Path, run: Path, data_dir: Path, teacher: BiEncoder, student: BiEncoder,
    cfg: DistillConfig,
) -> dict[str, Any]:  # fmt: skip
    from ar2.data.beir import load_queries
    from ar2.evaluate import compare, per_query
    from ar2.index import FaissIndex
    from ar2.pipeline import DenseRetriever

    index = FaissIndex.load(run / "index")
    queries = {q.id: q for q in load_queries(data_dir / "queries.jsonl")}
    splits = run_splits(run, data_dir)
    dev_ids = json.loads((run / "dev_split.json").read_text())["queries"]
    results: dict[str, Any] = {"layers": cfg.layers, "teacher_layers": _depth(teacher)}
    for split, qrels in splits.items():
        asked = [queries[q] for q in qrels if q in queries]
        values = {
            name: per_query(DenseRetriever(enc, index).retrieve(asked, 10), qrels, [MEASURE])
            for name, enc in (("teacher", teacher), ("student", student))
        }
        [row] = compare(values, "teacher", [MEASURE])
        results[split] = {name: statistics.fmean(v[MEASURE].values()) for name, v in values.items()}
        results[split] |= {"diff": row["mean_diff"], "p": row["p_value"], "queries": len(asked)}
    sample = [queries[q] for q in dev_ids[: cfg.latency_queries] if q in queries]
    results["latency_ms_p50"] = {"teacher": _latency(teacher, sample),
                                 "student": _latency(student, sample)}  # fmt: skip
    atomic_write_json(out / "report.json", results)
    atomic_write_text(out / "report.md", _markdown(results, out))
    return results


def _depth(encoder: BiEncoder) -> int:
    return int(encoder.query_model.config.num_hidden_layers)


def _latency(encoder: BiEncoder, queries: list[Query]) -> float:
    """p50 ms of one query's encoding, on torch (``ar2 serve --backend`` may be faster)."""
    times = []
    for q in [*queries[:5], *queries]:  # five to warm up
        began = time.perf_counter()
        encoder.encode_queries([q.text])
        times.append(1000 * (time.perf_counter() - began))
    return round(statistics.median(times[5:]), 2)


def _markdown(r: dict[str, Any], out: Path) -> str:
    lines = [
        f"# Query-tower distillation: {r['teacher_layers']} layers -> {r['layers']}", "",
        f"| split | queries | teacher {MEASURE} | student {MEASURE} | diff | p |",
        "|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for split in ("dev", "test"):
        if split in r:
            s = r[split]
            lines.append(f"| {split} | {s['queries']} | {s['teacher']:.4f} | {s['student']:.4f} "
                         f"| {s['diff']:+.4f} | {s['p']:.3g} |")  # fmt: skip
    t = r["latency_ms_p50"]
    lines += ["", f"One query's encoding (torch, p50): teacher {t['teacher']} ms, student "
              f"{t['student']} ms.", "",
              f"Serve it: `ar2 serve RUN --retriever {out / 'retriever'}`"]  # fmt: skip
    return "\n".join(lines) + "\n"
