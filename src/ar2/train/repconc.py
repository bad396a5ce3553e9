"""``run_repconc``: a run's index compressed by RepCONC (``ar2 repconc RUN --out OUT``).

RepCONC (Zhan et al., "Learning Discrete Representations via Constrained Clustering for
Effective and Efficient Dense Retrieval", WSDM 2022) trains the document side for its
compression, where JPQ (:mod:`ar2.train.jpq`) keeps FAISS's codes of the run's vectors:

1. The run's document vectors are compressed by FAISS's OPQ + PQ (``posthoc/``, as in JPQ):
   its rotation stays fixed, its centroids start the training.
2. **Constrained clustering** (``constrained/``): both towers and the centroids train
   together. Each step takes ``constrained.batch_size`` of the run's mined groups (a training
   query, one positive, ``n_neg`` of G0's negatives: RepCONC's static hard negatives),
   rotates the document vectors and assigns each sub-vector a centroid by Sinkhorn's
   balanced assignment over the batch (:func:`balanced_codes`), so that the documents spread
   evenly over the centroids instead of crowding a few. The loss
   (:func:`ar2.losses.constrained_quantization`) is the softmax of each query against the
   batch's *quantised* documents, with a straight-through gradient to the document tower, plus
   the clustering MSE. The corpus is then encoded by the trained document tower and coded by
   the nearest centroid (FAISS), into ``constrained/index``.
3. **JPQ's stage** over those codes: the query tower and the centroids, the codes fixed
   (:func:`ar2.train.jpq.jpq_stage`); the result is ``retriever/`` and ``index/``.

The report sets it beside the uncompressed run, FAISS's OPQ + PQ, and JPQ on FAISS's codes
(``jpq/``, the same second stage without the first): RepCONC minus JPQ is what the
constrained clustering adds. Where we differ from RepCONC's code: the model is a cosine one
(scores are the run's ``scale`` times the dot product, where RepCONC's are raw); the batch holds
``batch_size x (1 + n_neg)`` documents where RepCONC's holds thousands through gradient
caching, so the uniform constraint balances few documents over 256 centroids (with fewer
documents than centroids it keeps any two of the batch from sharing a centroid); Sinkhorn
runs in the log domain (RepCONC exponentiates, which overflows at ``epsilon`` 0.003 in float32
unless the distances are small); training documents are cut to the run's
``train_doc_max_length``.

Only training code imports this module (it imports torch at the top).

Folder::

    repconc.json  metrics.jsonl  checkpoints/  posthoc/  jpq/  constrained/  retriever/  index/
    report.json  report.md  per_query.tsv (the test split)  per_query.dev.tsv (dev)
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ar2._io import atomic_write_json, atomic_write_npy, atomic_write_text
from ar2._optional import require
from ar2._outdir import REPCONC_CONFIG
from ar2.config import RepCONCConfig
from ar2.data.training import TrainingGroup, read_groups
from ar2.encoders import BiEncoder
from ar2.errors import Ar2Error
from ar2.index import FaissIndex, read_manifest
from ar2.index.dense import ADD_CHUNK
from ar2.train.adore import MEASURE, measure
from ar2.train.derived import derived_output
from ar2.train.jpq import PQParts, check_settings, jpq_stage, posthoc_index, set_centroids
from ar2.train.stage import MetricsLog, stage_record, train_stage

log = logging.getLogger("ar2.train")

STAGE = "repconc"
SYSTEMS = ("uncompressed", "opq-pq", "jpq", "repconc")
GROUPS = Path("mined") / "round-0"


def run_repconc(
    run: Path, out: Path, cfg: RepCONCConfig, resume: bool = False, overwrite: bool = False,
    inside: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Compress ``run``'s index with RepCONC into ``out`` (see the module); the report.
    ``inside``: ``out`` is a folder of the run (``ar2 train --recipe repconc``)."""
    check_settings(run, cfg)
    if not (run / GROUPS / "groups.jsonl").is_file():
        raise Ar2Error(
            f"{run}: no {GROUPS}/groups.jsonl (the negatives G0 mined). Fix: give a run "
            "that `ar2 train` finished"
        )
    with derived_output(run, out, "repconc", REPCONC_CONFIG, cfg, resume, overwrite,
                        inside) as held:  # fmt: skip
        out, data_dir = held
        retriever = BiEncoder.load(run / "retriever")
        exact = FaissIndex.load(run / "index")
        posthoc = posthoc_index(out, exact, read_manifest(run / "index").get("encoder", {}), cfg)
        config = json.loads((run / "config.json").read_text())
        scale = float(config.get("scale", 20.0))
        jpq = jpq_stage(out, out / "jpq", run, data_dir, retriever, posthoc, cfg, scale)
        clustered = _constrained(out, run, data_dir, retriever, posthoc, cfg, config)
        final = jpq_stage(out, out, run, data_dir, *clustered, cfg, scale, "repconc-jpq")
        systems = {"uncompressed": (retriever, exact), "opq-pq": (retriever, posthoc),
                   "jpq": jpq, "repconc": final}  # fmt: skip
        return _report(out, run, data_dir, systems, cfg)


def balanced_codes(
    vectors: torch.Tensor, centroids: torch.Tensor, *, epsilon: float, iterations: int
) -> torch.Tensor:
    """RepCONC's constrained assignment: each sub-vector's centroid from Sinkhorn's optimal
    transport between the batch and the centroids with uniform marginals, so that every
    centroid takes an equal share of the batch.

    Per codebook, the squared distances ``D (N, K)`` are rescaled to [-1, 1]; the plan
    ``P = diag(u) exp(-D / epsilon) diag(v)`` is found by ``iterations`` alternating
    normalisations (each centroid's mass to ``1 / K``, each vector's to ``1 / N``), in the log
    domain; a vector's code is the centroid of its largest share.

    Args:
        vectors: ``(N, m, d / m)`` the batch's sub-vectors (rotated).
        centroids: ``(m, K, d / m)`` the codebooks.
        epsilon: the entropy; smaller is closer to the exact transport.
        iterations: Sinkhorn's normalisation rounds.

    Returns:
        ``(N, m)`` codes.

    Example:
        >>> x = torch.tensor([[[0.0]], [[0.1]]])  # two vectors, both nearest centroid 0
        >>> c = torch.tensor([[[0.0], [1.0]]])
        >>> balanced_codes(x, c, epsilon=0.003, iterations=100).flatten().tolist()
        [0, 1]
    """
    by_book = vectors.transpose(0, 1)  # (m, N, d / m)
    distance = torch.cdist(by_book.float(), centroids.float()).pow(2)  # (m, N, K)
    low = distance.amin(dim=(1, 2), keepdim=True)  # (m, 1, 1)
    high = distance.amax(dim=(1, 2), keepdim=True)  # (m, 1, 1)
    half = ((high - low) / 2).clamp_min(1e-12)  # (m, 1, 1)
    log_plan = -(distance - (high + low) / 2) / half / epsilon  # (m, N, K)
    n, k = distance.shape[1], distance.shape[2]
    for _ in range(iterations):
        log_plan = log_plan - _logsumexp(log_plan, 1) - math.log(k)  # each centroid: 1 / K
        log_plan = log_plan - _logsumexp(log_plan, 2) - math.log(n)  # each vector: 1 / N
    return log_plan.argmax(dim=2).T  # (N, m)


def _logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp`` over ``dim`` (kept) with each term at most ``e^-80`` below the largest
    floored there: at a small epsilon most terms underflow through float32's subnormal range,
    where the CPU's ``exp`` is slow (one step's 48 codebooks of 64 vectors: 3.8 s against
    0.6 s, Intel Xeon with AMX); what the floor adds is under ``K e^-80`` of the largest term.

    Example:
        >>> x = torch.tensor([[0.0, -1.0, -500.0]])
        >>> torch.allclose(_logsumexp(x, 1), x.logsumexp(1, keepdim=True))
        True
    """
    top = x.amax(dim=dim, keepdim=True)
    return top + (x - top).clamp_min(-80.0).exp().sum(dim=dim, keepdim=True).log()


class RepCONCModel(torch.nn.Module):
    """What RepCONC's first stage trains: the document tower (``doc``), the query tower
    (``query``, absent when the run's towers are one) and the centroids (``centroids``,
    ``(m, 256, d / m)``). The OPQ rotation ``(d, d)`` is a fixed buffer."""

    rotation: torch.Tensor

    def __init__(self, doc: Any, query: Any | None, parts: PQParts) -> None:
        super().__init__()
        self.doc = doc
        self.query = query
        self.centroids = torch.nn.Parameter(torch.from_numpy(parts.centroids.copy()))
        self.register_buffer("rotation", torch.from_numpy(parts.rotation.copy()), False)

    def rotate(self, vectors: torch.Tensor) -> torch.Tensor:
        """``(n, d)`` vectors in the rotated space the codebooks split."""
        return vectors.float() @ self.rotation.T  # (n, d)

    def quantize(self, rotated: torch.Tensor, cfg: RepCONCConfig) -> torch.Tensor:
        """``(n, d)`` the reconstructions of rotated vectors from their balanced codes."""
        m = self.centroids.shape[0]
        pieces = rotated.detach().view(len(rotated), m, -1)  # (n, m, d / m)
        codes = balanced_codes(pieces, self.centroids.detach(), epsilon=cfg.epsilon,
                               iterations=cfg.sinkhorn_iterations)  # (n, m)  # fmt: skip
        books = torch.arange(m, device=codes.device)  # (m,)
        return self.centroids[books, codes].flatten(1)  # (n, d)


def excluded_columns(ids: list[str], relevant: list[frozenset[str]], group: int) -> torch.Tensor:
    """``(B, N)`` bool: the batch's documents left out of each query's softmax, its other
    relevant documents and any repeat of a document, never its own positive (column
    ``b * group``).

    Example:
        >>> excluded_columns(["p1", "n1", "p2", "p1"], [frozenset({"p1"}), frozenset({"p2"})],
        ...                  2).tolist()
        [[False, False, False, True], [False, False, False, True]]
    """
    first: dict[str, int] = {}
    for j, doc in enumerate(ids):
        first.setdefault(doc, j)
    mask = [[j != b * group and (doc in rel or first[doc] != j) for j, doc in enumerate(ids)]
            for b, rel in enumerate(relevant)]  # fmt: skip
    return torch.tensor(mask, dtype=torch.bool)


def step_loss(
    model: RepCONCModel,
    student: BiEncoder,
    groups: list[TrainingGroup],
    docs: dict[str, Any],
    cfg: RepCONCConfig,
    scale: float,
    doc_len: int | None,
) -> Callable[[int], torch.Tensor]:
    """The loss of step ``s`` of the first stage (see the module)."""
    from ar2 import losses
    from ar2.train.steps import draw_batch

    def loss(step: int) -> torch.Tensor:
        batch = draw_batch(groups, docs, cfg.constrained, cfg.seed, STAGE, step)
        queries = model.rotate(student.embed_queries(batch.queries))  # (B, d)
        documents = model.rotate(student.embed_docs(batch.docs, doc_len))  # (N, d)
        group = batch.group_size
        targets = torch.arange(len(batch.queries), device=queries.device) * group  # (B,)
        excluded = excluded_columns(list(batch.ids), list(batch.relevant), group)  # (B, N)
        return losses.constrained_quantization(
            queries=queries, documents=documents, quantized=model.quantize(documents, cfg),
            targets=targets, excluded=excluded.to(queries.device), scale=scale,
            mse_weight=cfg.mse_weight,
        )  # fmt: skip

    return loss


def _constrained(
    out: Path, run: Path, data_dir: Path, retriever: BiEncoder, posthoc: FaissIndex,
    cfg: RepCONCConfig, config: dict[str, Any],
) -> tuple[BiEncoder, FaissIndex]:  # fmt: skip
    """The first stage (constrained clustering), then the corpus coded by its towers and
    centroids: ``constrained/retriever`` and ``constrained/index``."""
    from ar2.data.beir import load_corpus

    folder = out / "constrained"
    if (folder / "retriever").is_dir() and (folder / "index" / "manifest.json").is_file():
        return BiEncoder.load(folder / "retriever"), FaissIndex.load(folder / "index")
    groups = [g for g in read_groups(run / GROUPS) if g.positives and g.negatives]
    if not groups:
        raise Ar2Error(f"{run / GROUPS}: no group has both a positive and a negative. "
                       "Fix: give a run whose mining found negatives")  # fmt: skip
    corpus = load_corpus(data_dir / "corpus.jsonl")
    parts = PQParts.of(posthoc.index)
    doc = copy.deepcopy(retriever.doc_model)
    query = None if retriever.shared else copy.deepcopy(retriever.query_model)
    model = RepCONCModel(doc, query, parts)
    student = BiEncoder(doc, retriever.tokenizer, retriever.config, query,
                        source=retriever.source)  # fmt: skip
    model.to(student.device)
    final, centroids = folder / "retriever", folder / "centroids.npy"
    if not final.is_dir():
        loss = step_loss(model, student, groups, {d.id: d for d in corpus}, cfg,
                         float(config.get("scale", 20.0)),
                         config.get("train_doc_max_length"))  # fmt: skip
        log.info("RepCONC's constrained clustering on %d groups", len(groups))
        stage_log = train_stage(out, STAGE, {"repconc": model}, cfg.constrained, loss, cfg)
        MetricsLog(out / "metrics.jsonl").write(stage_record(STAGE, 0, "repconc", stage_log))
        atomic_write_npy(centroids, model.centroids.detach().cpu().numpy())
        student.save(final)
    student = BiEncoder.load(final)
    index = recode(posthoc, student, corpus, np.load(centroids, allow_pickle=False))
    index.save(
        folder / "index",
        {"encoder": student.describe(), "repconc": {"m": cfg.m, "stage": "constrained"}},
        corpus,
    )
    return student, index


def recode(
    posthoc: FaissIndex, student: BiEncoder, corpus: list[Any], centroids: np.ndarray
) -> FaissIndex:
    """``posthoc``'s rotation with ``centroids`` ``(m, 256, d / m)``, over the corpus as
    ``student`` encodes it, each sub-vector coded by its nearest centroid (FAISS)."""
    faiss = require("faiss")
    index = faiss.clone_index(posthoc.index)
    index.reset()  # the codes go; the rotation and the codebooks stay
    set_centroids(index, centroids)
    log.info("encoding %d documents with the trained document tower", len(corpus))
    vectors = student.encode_docs(corpus, progress=True)  # (n, d)
    for start in range(0, len(vectors), ADD_CHUNK):
        index.add(vectors[start : start + ADD_CHUNK])
    return FaissIndex(index, [d.id for d in corpus], posthoc.metric, posthoc.factory,
                      posthoc.config)  # fmt: skip


def _report(
    out: Path, run: Path, data_dir: Path, systems: dict[str, tuple[BiEncoder, FaissIndex]],
    cfg: RepCONCConfig,
) -> dict[str, Any]:  # fmt: skip
    pairs = [("repconc", "jpq"), ("repconc", "opq-pq"), ("repconc", "uncompressed"),
             ("jpq", "uncompressed")]  # fmt: skip
    results: dict[str, Any] = {"m": cfg.m}
    results |= measure(run, data_dir, systems, pairs, out)
    atomic_write_json(out / "report.json", results)
    atomic_write_text(out / "report.md", _markdown(results, out))
    return results


def _markdown(r: dict[str, Any], out: Path) -> str:
    tests = ("repconc - jpq", "repconc - opq-pq", "repconc - uncompressed", "jpq - uncompressed")
    lines = [
        f"# RepCONC: {r['m']} bytes per document", "",
        "| split | queries | " + " | ".join(f"{s} {MEASURE}" for s in SYSTEMS) + " | "
        + " | ".join(f"{t} (p)" for t in tests) + " |",
        "|---|---:|" + "---:|" * (len(SYSTEMS) + len(tests)),
    ]  # fmt: skip
    for split in ("dev", "test"):
        if split in r:
            s = r[split]
            cells = [f"{s[MEASURE][name]:.4f}" for name in SYSTEMS]
            cells += [f"{s['tests'][t]['diff']:+.4f} ({s['tests'][t]['p']:.3g})" for t in tests]
            lines.append(f"| {split} | {s['queries']} | " + " | ".join(cells) + " |")
    lines += ["", f"Serve it: `ar2 serve {out / 'index'}`"]
    return "\n".join(lines) + "\n"
