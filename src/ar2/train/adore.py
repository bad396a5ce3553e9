"""``run_adore``: a run's query tower trained against its fixed document index (``ar2 adore``).

ADORE (Zhan et al., "Optimizing Dense Retrieval Model Training with Hard Negatives", SIGIR
2021, §4.2) trains only the query encoder, against the document vectors of a finished
retriever, which stay fixed: each step encodes a batch of training queries, searches the
index for their top ``negatives`` documents with the query tower as it now stands (dynamic
hard negatives, where a static list goes stale as the model moves), adds the relevant
documents the search missed, and trains on the ΔMRR-weighted pairwise loss
(:func:`ar2.losses.rank_weighted_pairwise`). The index does not change, so nothing is
re-encoded: the search is exact over the run's own float vectors.

JPQ (:mod:`ar2.train.jpq`) is the same loop over a product-quantized index whose centroids
train too; :func:`step_loss` and :func:`measure` serve both.

Where we differ from ADORE: the model is a cosine one, so scores are the run's ``scale``
times the dot product (ADORE's RoBERTa gives large dot products unscaled); ADORE starts from
STAR's model, we start from the run's delivered retriever (AR2's, or G0 where the run
delivered round 0); the training queries are the run's (its dev queries left out).

Only training code imports this module (it imports torch at the top; ``import ar2`` does not).

With ``kd_weight > 0`` the query tower also distils a teacher, as AR2's retriever does
(spec §3.3): the run's ranker, or a mix of it with the starting tower and BM25
(:class:`ar2.train.teacher.PairTeacher`), over each query's top ``kd_depth`` documents of that
step's search. Our addition: ADORE has no teacher; AR2 has no per-step search.

Folder::

    adore.json  metrics.jsonl  checkpoints/  retriever/  index/  report.json  report.md
    per_query.tsv (the test split)  per_query.dev.tsv (the run's dev queries)
    teacher.json (a tuned teacher's weights and its dev record)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ar2._io import atomic_write_json, atomic_write_text
from ar2._optional import require
from ar2._outdir import ADORE_CONFIG
from ar2.config import ADOREConfig
from ar2.encoders import BiEncoder, CrossEncoder
from ar2.errors import Ar2Error
from ar2.index import FaissIndex
from ar2.index.factory import compresses
from ar2.train.derived import derived_output, run_splits
from ar2.train.loop import StageLog
from ar2.train.stage import MetricsLog, RunContext, stage_record, train_stage
from ar2.train.teacher import check_ranker, for_run
from ar2.types import Qrels, Query

log = logging.getLogger("ar2.train")

STAGE = "adore"
MEASURE = "nDCG@10"
SYSTEMS = ("run", "adore")

Search = Callable[[np.ndarray, int], np.ndarray]
"""``search(vectors (B, d), k) -> (B, k)`` row numbers of the documents found (-1: none)."""
Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``score(query vectors (B, d), candidate rows (B, C)) -> (B, C)`` the model's scores."""
Judge = Callable[[Sequence[int], np.ndarray], torch.Tensor]
"""``judge(training query indices (B,), index rows (B, K)) -> (B, K)`` a teacher's scores
(:class:`ar2.train.teacher.PairTeacher`)."""


def run_adore(
    run: Path, out: Path, cfg: ADOREConfig, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Train ``run``'s query tower against its fixed index into ``out`` (see the module);
    returns the report."""
    check_run_index(run)
    if cfg.kd_weight > 0:
        check_ranker(run)
    with derived_output(run, out, "adore", ADORE_CONFIG, cfg, resume, overwrite) as (out, data):
        retriever = BiEncoder.load(run / "retriever")
        exact = FaissIndex.load(run / "index")
        scale = float(json.loads((run / "config.json").read_text()).get("scale", 20.0))
        student = _train(out, run, data, retriever, exact, cfg, scale)
        systems = {"run": (retriever, exact), "adore": (student, exact)}
        report = measure(run, data, systems, [("adore", "run")], out)
        atomic_write_json(out / "report.json", report)
        atomic_write_text(out / "report.md", _markdown(report, out))
        return report


def step_loss(
    student: BiEncoder,
    queries: Sequence[str],
    positives: Sequence[list[int]],
    search: Search,
    score: Score,
    cfg: ADOREConfig,
    stage: str = STAGE,
    judge: Judge | None = None,
) -> Callable[[int], torch.Tensor]:
    """The loss of step ``s`` of ADORE's loop: ``cfg.stage.batch_size`` training queries
    (``queries[i]`` with the index rows ``positives[i]`` of its relevant documents; the
    batches are seeded by ``cfg.seed`` and ``stage``), searched with the student as it now is,
    scored by ``score`` against their candidates in rank order. With ``judge`` (and
    ``cfg.kd_weight > 0``) the student also distils the teacher's scores of each query's top
    ``cfg.kd_depth`` documents (AR2's L_KD)."""
    from ar2 import losses
    from ar2.train import steps

    size = min(cfg.stage.batch_size, len(queries))

    def loss(step: int) -> torch.Tensor:
        rows = steps.epoch_picks(len(queries), size, cfg.seed, stage, step)
        vectors = student.embed_queries([queries[i] for i in rows])  # (B, d)
        found = search(vectors.detach().float().cpu().numpy(), cfg.negatives)  # (B, K)
        candidates, relevant, valid = candidate_lists(found, [positives[i] for i in rows])
        rows_t, relevant_t, valid_t = (torch.from_numpy(a).to(student.device)
                                       for a in (candidates, relevant, valid))  # fmt: skip
        scores = score(vectors, rows_t)  # (B, C)
        pairwise = losses.rank_weighted_pairwise(scores=scores, relevant=relevant_t,
                                                 valid=valid_t)  # fmt: skip
        if judge is None or cfg.kd_weight == 0:
            return pairwise
        depth = cfg.kd_depth
        if not valid[:, :depth].all():
            raise Ar2Error(f"the index holds fewer than kd_depth = {depth} documents. "
                           "Fix: lower kd_depth")  # fmt: skip
        teacher = judge(rows, candidates[:, :depth]).to(scores.device)  # (B, K)
        kd = losses.ar2_distillation(scores[:, :depth], teacher)
        return pairwise + cfg.kd_weight * kd

    return loss


def candidate_lists(
    found: np.ndarray, positives: list[list[int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's candidates in rank order: the search's results ``found`` ``(B, K)``, then
    the relevant rows it missed. Returns rows, relevance and validity, each ``(B, C)``.

    Example:
        >>> rows, rel, valid = candidate_lists(np.array([[5, 7, -1]]), [[7, 2]])
        >>> rows.tolist(), rel.tolist(), valid.tolist()
        ([[5, 7, 2]], [[False, True, True]], [[True, True, True]])
    """
    lists = []
    for row, pos in zip(found, positives):
        got = [int(r) for r in row if r >= 0]
        lists.append(got + [p for p in pos if p not in set(got)])
    width = max(len(x) for x in lists)
    rows = np.zeros((len(lists), width), np.int64)
    valid = np.zeros((len(lists), width), bool)
    relevant = np.zeros((len(lists), width), bool)
    for b, (got, pos) in enumerate(zip(lists, positives)):
        rows[b, : len(got)] = got
        valid[b, : len(got)] = True
        relevant[b, : len(got)] = np.isin(got, pos)
    return rows, relevant, valid


def training_queries(
    run: Path, data_dir: Path, ids: list[str]
) -> tuple[list[str], list[list[int]]]:
    """The run's training queries (its dev queries left out) with the rows of their relevant
    documents in the index."""
    from ar2.data.beir import load_qrels, load_queries

    dev = set(json.loads((run / "dev_split.json").read_text())["queries"])
    qrels = load_qrels(data_dir / "qrels" / "train.tsv")
    queries = [q for q in load_queries(data_dir / "queries.jsonl") if q.id not in dev]
    return query_rows(queries, qrels, ids, data_dir / "qrels" / "train.tsv")


def query_rows(
    queries: Sequence[Query], qrels: Qrels, ids: Sequence[str], source: Path
) -> tuple[list[str], list[list[int]]]:
    """The texts of ``queries`` that have a relevant document among the index's ``ids``, with
    the rows of those documents (``source``: where the judgements came from, for the error).

    Example:
        >>> from ar2.types import Query
        >>> query_rows([Query("q1", "a?"), Query("q2", "b?")], {"q1": {"d2": 1}, "q2": {"d9": 1}},
        ...            ["d1", "d2"], Path("qrels.tsv"))
        (['a?'], [[1]])
    """
    row = {doc: i for i, doc in enumerate(ids)}
    texts, positives = [], []
    for q in queries:
        rel = [row[d] for d, grade in qrels.get(q.id, {}).items() if grade > 0 and d in row]
        if rel:
            texts.append(q.text)
            positives.append(rel)
    if not texts:
        raise Ar2Error(
            f"{source}: no training query outside the run's dev split has a relevant document "
            "in the index. Fix: train on a collection with train qrels"
        )
    log.info("training on %d queries", len(texts))
    return texts, positives


def measure(
    run: Path,
    data_dir: Path,
    systems: dict[str, tuple[BiEncoder, FaissIndex]],
    pairs: Sequence[tuple[str, str]],
    out: Path | None = None,
) -> dict[str, Any]:
    """nDCG@10 of each system (an encoder and an index) on the run's dev split and the test
    split, with a paired t-test for each ``(a, b)`` of ``pairs``: ``{split: {"queries",
    "nDCG@10": {system: mean}, "tests": {"a - b": {"diff", "p"}}}}``. With ``out``, each
    split's values per query go to ``out/per_query.tsv`` (test) and ``per_query.dev.tsv``
    (:func:`ar2.report.read_per_query`), for tests over several outputs."""
    from ar2.data.beir import load_queries
    from ar2.evaluate import compare, per_query
    from ar2.report import write_per_query

    queries = {q.id: q for q in load_queries(data_dir / "queries.jsonl")}
    results: dict[str, Any] = {}
    for split, qrels in run_splits(run, data_dir).items():
        asked = [queries[q] for q in qrels if q in queries]
        vectors: dict[int, np.ndarray] = {}  # one encoding per encoder: two systems share one
        values = {}
        for name, (enc, index) in systems.items():
            if id(enc) not in vectors:
                vectors[id(enc)] = enc.encode_queries(asked)
            hits = index.search(vectors[id(enc)], 10)
            values[name] = per_query({q.id: h for q, h in zip(asked, hits)}, qrels, [MEASURE])
        means = {name: statistics.fmean(v[MEASURE].values()) for name, v in values.items()}
        tests = {}
        for a, b in pairs:
            [row] = compare({a: values[a], b: values[b]}, b, [MEASURE])
            tests[f"{a} - {b}"] = {"diff": row["mean_diff"], "p": row["p_value"]}
        results[split] = {"queries": len(asked), MEASURE: means, "tests": tests}
        if out is not None:
            write_per_query(out, values, split)
    return results


def float_vectors(index: FaissIndex) -> np.ndarray:
    """The ``(n, d)`` float32 document vectors of an uncompressed index, or the ones a
    compressed index keeps on disk for re-scoring."""
    from ar2 import _npy

    if isinstance(index.vectors, _npy.NpyParts):
        return index.vectors.read(slice(0, len(index.ids)))
    if index.vectors is not None:
        return np.asarray(index.vectors, dtype=np.float32)
    if compresses(index.factory):
        raise Ar2Error(
            f"the run's index is a {index.factory} index without its float vectors, which "
            "ADORE and JPQ train against. Fix: rebuild the run's index uncompressed (--preset "
            "flat)"
        )
    ivf = require("faiss").try_extract_index_ivf(index.index)
    if ivf is not None:
        ivf.make_direct_map()  # IVF reconstructs by id only with it
    return index.index.reconstruct_n(0, index.index.ntotal)  # type: ignore[no-any-return]


def check_run_index(run: Path, command: str = "ADORE") -> None:
    """Refuse, before anything is written, a run whose index ``command`` cannot use as exact
    float vectors (:func:`float_vectors`): one searched by another metric than the inner
    product, or a compressed one without its ``vectors.npy``."""
    from ar2.index.dense import VECTORS_FILE

    path = run / "index" / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    if manifest.get("metric") not in (None, "ip"):
        raise Ar2Error(
            f"{run / 'index'}: a {manifest['metric']} index; {command} needs inner products. "
            "Fix: use a run whose index is searched by inner product (ar2's default)"
        )
    factory = manifest.get("factory")
    if factory and compresses(factory) and not (run / "index" / VECTORS_FILE).is_file():
        raise Ar2Error(
            f"{run / 'index'}: a {factory} index without its float vectors, which {command} "
            "needs. Fix: rebuild the run's index uncompressed (--preset flat)"
        )


def _train(
    out: Path, run: Path, data_dir: Path, retriever: BiEncoder, exact: FaissIndex,
    cfg: ADOREConfig, scale: float,
) -> BiEncoder:  # fmt: skip
    final = out / "retriever"
    if final.is_dir() and (out / "index" / "manifest.json").is_file():
        return BiEncoder.load(final)
    queries, positives = training_queries(run, data_dir, exact.ids)
    docs = float_vectors(exact)
    judge = None
    if cfg.kd_weight > 0:
        from ar2.data.beir import load_corpus

        corpus = load_corpus(data_dir / "corpus.jsonl")
        teacher = for_run(out, run, data_dir, corpus, retriever, exact, docs, queries,
                          cfg.teacher, MEASURE)  # fmt: skip
        judge = teacher.scores
    student, stage_log = query_tower(out, retriever, docs, queries, positives, cfg, scale,
                                     judge)  # fmt: skip
    student.save(final)
    student = BiEncoder.load(final)
    metrics = out / "metrics.jsonl"
    if not metrics.is_file():  # a run killed after it wrote this line resumes without it
        MetricsLog(metrics).write(stage_record(STAGE, 0, "adore", stage_log))
    _save_index(exact, out / "index", student, data_dir, cfg)
    return student


def query_tower(
    out: Path, retriever: BiEncoder, docs: np.ndarray, queries: Sequence[str],
    positives: Sequence[list[int]], cfg: ADOREConfig, scale: float, judge: Judge | None = None,
) -> tuple[BiEncoder, StageLog]:  # fmt: skip
    """ADORE's training (see the module): a copy of ``retriever``'s query tower trained against
    the fixed document vectors ``docs`` ``(n, d)`` on ``queries`` with the index rows of their
    relevant documents (and a teacher's scores, ``judge``), resumable from
    ``out/checkpoints/adore``; the document tower is ``retriever``'s, shared."""
    faiss = require("faiss")
    flat = faiss.IndexFlatIP(docs.shape[1])
    flat.add(docs)
    doc_vectors = torch.from_numpy(docs)
    tower = copy.deepcopy(retriever.query_model)
    student = BiEncoder(retriever.doc_model, retriever.tokenizer, retriever.config, tower,
                        source=retriever.source)  # fmt: skip

    def search(vectors: np.ndarray, k: int) -> np.ndarray:
        return flat.search(vectors, k)[1]  # type: ignore[no-any-return]

    def score(vectors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        found = doc_vectors.to(vectors.device)[rows]  # (B, C, d)
        return scale * torch.einsum("bd,bcd->bc", vectors.float(), found)  # (B, C)

    loss = step_loss(student, queries, positives, search, score, cfg, judge=judge)
    stage = dataclasses.replace(cfg.stage, steps=cfg.stage.steps_for(len(queries)))
    return student, train_stage(out, STAGE, {"query": tower}, stage, loss, cfg)


def run_stage(
    ctx: RunContext, retriever: BiEncoder, ranker: CrossEncoder, index_name: str
) -> BiEncoder:
    """ADORE as the last training stage of ``ar2 train`` (``[adore]``, the ``adore`` recipe):
    ``retriever``'s query tower trained against the run's index ``indexes/INDEX_NAME`` (the
    delivered round's), saved in ``adore/retriever`` (``adore-train``); then, as after every
    round, its dev run and G (``dev-adore``) and that run reranked by ``ranker`` to tune the
    fusion weight the run delivers (``dev-gd-adore``). Rank 0 trains; every rank returns the
    saved model."""
    from ar2 import distributed
    from ar2.charts import ADORE_DEV
    from ar2.data.trec import write_run
    from ar2.retrievers import dense
    from ar2.train.rounds import dev_rerank, dev_retrieval

    final = ctx.out / STAGE / "retriever"
    if not final.is_dir():
        distributed.on_main(_train_in_run, ctx, retriever, index_name, final)
    student = BiEncoder.load(final)
    if ADORE_DEV[0] not in ctx.metrics.seen:
        began = time.perf_counter()
        index = FaissIndex.load(ctx.out / "indexes" / index_name, mmap=True)
        run, dev = dev_retrieval(ctx, dense(student, index))
        distributed.on_main(write_run, run, ctx.out / "dev_runs" / f"{STAGE}.trec")
        seconds = round(time.perf_counter() - began, 2)
        ctx.metrics.write({"stage": ADORE_DEV[0], "round": ctx.cfg.rounds, "dev": dev,
                           "index": index_name, "seconds": seconds})  # fmt: skip
    if ADORE_DEV[1] not in ctx.metrics.seen:
        dev_rerank(ctx, ctx.cfg.rounds, ranker, STAGE)
    return student


def _train_in_run(ctx: RunContext, retriever: BiEncoder, index_name: str, final: Path) -> None:
    cfg, data = ctx.cfg, ctx.data
    index = FaissIndex.load(ctx.out / "indexes" / index_name, mmap=True)
    queries, positives = query_rows(data.train, data.train_qrels, index.ids,
                                    Path("qrels") / "train.tsv")  # fmt: skip
    settings = ADOREConfig(negatives=cfg.adore_negatives, seed=cfg.seed, stage=cfg.adore,
                           checkpoint_every=cfg.checkpoint_every,
                           attention_dropout=cfg.attention_dropout, fast_dropout=cfg.fast_dropout,
                           train_attention=cfg.train_attention)  # fmt: skip
    student, stage_log = query_tower(ctx.out, retriever, float_vectors(index), queries, positives,
                                     settings, cfg.scale)  # fmt: skip
    ctx.metrics.write(stage_record("adore-train", cfg.rounds, "retriever", stage_log))
    student.save(final)


def _save_index(
    index: FaissIndex, folder: Path, student: BiEncoder, data_dir: Path, cfg: ADOREConfig
) -> None:
    """The run's index, unchanged, with its documents; its manifest names the trained query
    tower, which ``ar2 serve`` loads beside it."""
    from ar2.data.beir import iter_corpus

    docs = iter_corpus(data_dir / "corpus.jsonl", warn=False)
    extra = {"encoder": student.describe(), "truncation": student.truncation(),
             "adore": {"config": dataclasses.asdict(cfg)}}  # fmt: skip
    index.save(folder, extra, docs)


def _markdown(r: dict[str, Any], out: Path) -> str:
    lines = [
        "# ADORE: the query tower trained against the run's fixed index", "",
        f"| split | queries | run {MEASURE} | adore {MEASURE} | adore - run (p) |",
        "|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    for split in ("dev", "test"):
        if split in r:
            s = r[split]
            [t] = s["tests"].values()
            means = " | ".join(f"{s[MEASURE][name]:.4f}" for name in SYSTEMS)
            diff = f"{t['diff']:+.4f} ({t['p']:.3g})"
            lines.append(f"| {split} | {s['queries']} | {means} | {diff} |")
    lines += ["", f"Serve it: `ar2 serve {out / 'index'}`"]
    return "\n".join(lines) + "\n"
