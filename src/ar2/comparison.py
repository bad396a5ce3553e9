"""Comparing systems (``ar2 eval``, and the test comparison that ends ``ar2 train``): named
systems run on one split of a BEIR folder, scored, tested against the first, and reported.

A system is a retriever spec (:mod:`ar2.retrievers`: ``bm25``, ``dense[:MODEL]``,
``hybrid[:MODEL]``). With a reranker, every system also gets a ``<name>+rerank`` variant.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ar2 import __version__
from ar2.config import IndexConfig
from ar2.errors import Ar2Error
from ar2.retrievers import Retrievers, parse_spec
from ar2.types import Doc, Qrels, Query, Run

log = logging.getLogger(__name__)

DEFAULT_MEASURES = ("nDCG@10", "RR@10", "R@10", "R@100")


@dataclass(frozen=True)
class EvalJob:
    """One ``ar2 eval`` run: where the data is, which systems, what to measure, where to write."""

    data_dir: Path
    split: str
    systems: tuple[str, ...]
    out: Path
    measures: tuple[str, ...] = DEFAULT_MEASURES
    depth: int = 100
    reranker: str | None = None
    rerank_k: int = 100
    fusion_weight: float | None = None  # None: the reranker's saved weight
    precision: str = "auto"
    index: IndexConfig = IndexConfig()
    overwrite: bool = False
    chain: tuple[str, ...] = ()  # systems also tested each against the one before it

    def inputs(self) -> list[str | Path | None]:
        """The folders this job reads: the data, the model folders and the reranker."""
        return [self.data_dir, *(parse_spec(s)[1] for s in self.systems), self.reranker]


def _check_job(job: EvalJob) -> None:
    """Fail before any work when a measure, a system name or a model folder is wrong."""
    from ar2.encoders._hf import check_model_dir
    from ar2.evaluate import parse_measures

    try:
        parse_measures(job.measures)
    except ValueError as err:
        raise Ar2Error(f"{err}. Fix: correct --measures") from None
    specs = job.systems

    if not specs:
        raise Ar2Error("no systems given. Fix: pass e.g. --systems bm25,dense,hybrid")
    for spec in specs:
        _, model = parse_spec(spec)
        if model:
            check_model_dir(model)


def run_eval(job: EvalJob) -> dict[str, dict[str, float]]:
    """Run every system of ``job``, write the report into ``job.out`` and return the results.

    ``job.out`` must be new, empty or an earlier eval's folder (else ``job.overwrite``). Its
    ``manifest.json`` lists what the eval writes, from the start (a killed eval's folder is
    still an eval folder); the files the previous eval listed and this one does not write
    again (the runs of systems no longer asked for) are removed, and nothing else.
    """
    from ar2._outdir import claim
    from ar2.data.beir import load_beir
    from ar2.data.trec import write_run

    _check_job(job)
    with claim(job.out, "eval", job.inputs(), job.overwrite) as out:
        previous = _listed_files(out)
        names = [n for s in job.systems for n in (s, f"{s}+rerank")[: 2 if job.reranker else 1]]
        files = list(dict.fromkeys(f"runs/{_file_name(n)}.trec" for n in names)) + [*REPORT_FILES]
        _write_manifest(out, job, sorted(set(previous) | set(files)), done=False)
        corpus, queries, qrels = load_beir(job.data_dir, job.split)
        systems = Retrievers(corpus, job.index, job.precision, job.depth,
                             str(job.data_dir / "corpus.jsonl"))  # fmt: skip
        runs: dict[str, Run] = {}
        for spec in job.systems:
            runs.update(_run_system(spec, systems, corpus, queries, job))
        for name, run in runs.items():
            write_run(run, out / "runs" / f"{_file_name(name)}.trec", tag=_file_name(name))
        systems.note_truncation()
        results = score_and_report(job, runs, (queries, qrels), corpus, systems.descriptions)
        _write_manifest(out, job, files, done=True)
        _remove_stale(out, set(previous) - set(files))
    return results


REPORT_FILES = ("report.md", "report.json", "report.png", "per_query.tsv", "protocol.json")
"""What :func:`ar2.report.write_report` writes."""
_RUN_FILE = re.compile(r"runs/[A-Za-z0-9+._-]+\.trec")


def _listed_files(out: Path) -> list[str]:
    """The files an earlier eval's manifest lists, those of names eval writes only."""
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return []
    if not isinstance(manifest, dict) or manifest.get("kind") != "eval":
        return []
    listed = manifest.get("files")
    return [
        f
        for f in (listed if isinstance(listed, list) else [])
        if isinstance(f, str) and (f in REPORT_FILES or _RUN_FILE.fullmatch(f))
    ]


def _write_manifest(out: Path, job: EvalJob, files: list[str], done: bool) -> None:
    from ar2._io import atomic_write_json

    settings = {k: str(v.resolve()) if isinstance(v, Path) else v for k, v in vars(job).items()}
    settings["index"] = vars(job.index)
    record = {"kind": "eval", "ar2_version": __version__, "complete": done, "job": settings}
    atomic_write_json(out / "manifest.json", record | {"files": files})


def _remove_stale(out: Path, stale: set[str]) -> None:
    """Remove the regular files ``stale`` of ``out`` (a link is left alone, and its target)."""
    for name in sorted(stale):
        path = out / name
        if path.is_file() and not path.is_symlink():
            path.unlink()


def _run_system(
    spec: str, systems: Retrievers, corpus: list[Doc], queries: list[Query], job: EvalJob
) -> dict[str, Run]:
    from ar2.pipeline import SearchPipeline

    log.info("system %s: retrieving top %d for %d queries", spec, job.depth, len(queries))
    runs = {spec: SearchPipeline(systems.get(spec)).run(queries, job.depth)}
    if job.reranker:
        pipe = SearchPipeline(systems.get(spec), _ranker(job, corpus), job.rerank_k)
        log.info("system %s+rerank: reranking the top %d", spec, job.rerank_k)
        runs[f"{spec}+rerank"] = pipe.run(queries, job.depth, progress=True)
    return runs


def _ranker(job: EvalJob, corpus: list[Doc]) -> Any:
    from ar2.encoders import CrossEncoder
    from ar2.pipeline import CrossEncoderRanker

    weight: dict[str, Any] = (
        {} if job.fusion_weight is None else {"fusion_weight": job.fusion_weight}
    )
    model = CrossEncoder.load(job.reranker, precision=job.precision, **weight)
    return CrossEncoderRanker(model, {d.id: d for d in corpus})


def score_and_report(
    job: EvalJob,
    runs: dict[str, Run],
    labels: tuple[list[Query], Qrels],
    corpus: list[Doc],
    systems: dict[str, Any],
) -> dict[str, dict[str, float]]:
    """Score ``runs`` against ``labels``, test each system against the first, write the report."""
    from ar2.evaluate import compare, compare_chain, mean_of, per_query
    from ar2.report import write_report

    queries, qrels = labels
    per_q = {name: per_query(run, qrels, job.measures) for name, run in runs.items()}
    results = {name: mean_of(values) for name, values in per_q.items()}
    if any(q.answers for q in queries):
        for name, accuracy in _answer_accuracy(job, runs, queries, corpus).items():
            results[name].update(accuracy)
    baseline = next(iter(runs))
    comparisons = compare(per_q, baseline, job.measures) if len(runs) > 1 else []
    chain = [name for name in job.chain if name in per_q]
    stages = compare_chain(per_q, chain, job.measures)
    protocol = _protocol(job, qrels, corpus, systems, baseline)
    write_report(job.out, results, per_q, protocol, comparisons, stages)
    return results


def _answer_accuracy(
    job: EvalJob, runs: dict[str, Run], queries: list[Query], corpus: list[Doc]
) -> dict[str, dict[str, float]]:
    """QA data (queries with answer strings): DPR's top-k accuracy per system."""
    from ar2.evaluate import answer_accuracy

    texts = {d.id: d.full_text() for d in corpus}
    ks = tuple(k for k in (1, 5, 20, 100) if k <= job.depth)
    log.info("queries carry answers: adding %s (DPR has_answer)", [f"Acc@{k}" for k in ks])
    return {name: answer_accuracy(run, queries, texts, ks) for name, run in runs.items()}


def _protocol(
    job: EvalJob, qrels: Qrels, corpus: Sequence[Doc], systems: dict[str, Any], baseline: str
) -> dict[str, Any]:
    from ar2.evaluate import PROTOCOL_NOTES

    judged = sum(1 for grades in qrels.values() if any(g > 0 for g in grades.values()))
    return {
        **PROTOCOL_NOTES,
        "dataset": str(job.data_dir),
        "split": job.split,
        "queries_judged": judged,
        "corpus_size": len(corpus),
        "measures": list(job.measures),
        "retrieval_depth": job.depth,
        "fusion": "hybrid = reciprocal rank fusion (k=60) of bm25 and dense, each at the depth",
        "rerank": f"top {job.rerank_k} by {job.reranker}" if job.reranker else "none",
        "significance": f"paired two-sided t-test of each system against {baseline!r}, "
        "Holm correction over all comparisons, alpha 0.05",
        "systems": systems,
        "truncation": _truncation(systems),
        "ar2_version": __version__,
    }


def _truncation(systems: dict[str, Any]) -> str:
    """One line: what each dense system's encoder cut to its token limits."""
    notes = [f"{name}: {d['truncation']}" for name, d in systems.items()
             if isinstance(d, dict) and "truncation" in d]  # fmt: skip
    return " | ".join(notes) or "no dense encoder"


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_+." else "_" for c in name)
