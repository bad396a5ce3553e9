"""``run_jpq``: a run's query tower and PQ centroids trained together (``ar2 jpq``).

JPQ (Zhan et al., "Jointly Optimizing Query Encoder and Product Quantization to Improve
Retrieval Performance", CIKM 2021) compresses a dense index and then trains the query side
against the compressed documents, so that the compression loses little:

1. The run's document vectors are compressed once by FAISS's OPQ + PQ (``OPQ{m},PQ{m}x8``):
   a rotation, ``m`` codebooks of 256 centroids each, and ``m`` bytes of codes per document.
   Searched with the run's own query tower, this is the post-hoc baseline (``posthoc/``).
2. The rotation and the codes stay fixed. The query tower and the centroids train together:
   each step encodes a batch of training queries, searches the PQ index as it stands for the
   top ``negatives`` documents (ADORE's dynamic negatives), adds the relevant documents the
   search missed, and scores the candidates against their reconstructions from the centroids,
   so that the gradient reaches both. The loss is the ΔMRR-weighted pairwise loss of ADORE and
   JPQ (:func:`ar2.losses.rank_weighted_pairwise`).
3. After each update the centroids are written back into the FAISS index, which the next
   step searches and the run saves (``index/``).

Only training code imports this module (it imports torch at the top; ``import ar2`` does not).
The document tower and the codes never change: the index holds ``m`` bytes per document and
no float vectors. Where we differ from JPQ's code: the model is a cosine one, so scores are
the run's ``scale`` times the dot product (JPQ's RoBERTa gives large dot products unscaled);
the gradient clipping covers the centroids too; the training queries are the run's (its dev
queries left out); there is no IVF layer (JPQ's has one list, so none in effect).

Folder::

    jpq.json  metrics.jsonl  checkpoints/  posthoc/  retriever/  index/  report.json  report.md
    per_query.tsv (the test split)  per_query.dev.tsv (the run's dev queries)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ar2._io import atomic_write_json, atomic_write_text
from ar2._optional import require
from ar2._outdir import JPQ_CONFIG
from ar2.config import IndexConfig, JPQConfig
from ar2.encoders import BiEncoder
from ar2.errors import Ar2Error
from ar2.index import FaissIndex, read_manifest
from ar2.index.dense import ADD_CHUNK, training_rows
from ar2.index.factory import faiss_metric
from ar2.train.adore import MEASURE, float_vectors, measure, step_loss, training_queries
from ar2.train.derived import derived_output
from ar2.train.stage import MetricsLog, stage_record, train_stage

log = logging.getLogger("ar2.train")

STAGE = "jpq"
SYSTEMS = ("uncompressed", "opq-pq", "jpq")


def pq_factory(m: int) -> str:
    """The FAISS factory string of an OPQ rotation and ``m`` 8-bit sub-quantizers.

    Example:
        >>> pq_factory(48)
        'OPQ48,PQ48x8'
    """
    return f"OPQ{m},PQ{m}x8"


@dataclasses.dataclass
class PQParts:
    """What JPQ reads of a FAISS ``OPQ,PQ`` index: its parts as numpy arrays.

    Attributes:
        rotation: ``(d, d)`` the OPQ matrix ``A``; a vector is searched as ``A x``.
        centroids: ``(m, 256, d / m)`` the codebooks.
        codes: ``(n, m)`` each document's centroid in each codebook.
    """

    rotation: np.ndarray
    centroids: np.ndarray
    codes: np.ndarray

    @classmethod
    def of(cls, index: Any) -> PQParts:
        """The parts of a FAISS ``IndexPreTransform(OPQMatrix, IndexPQ)``."""
        faiss = require("faiss")
        transform = faiss.downcast_VectorTransform(index.chain.at(0))
        rotation = faiss.vector_to_array(transform.A).reshape(transform.d_out, transform.d_in)
        pq_index = faiss.downcast_index(index.index)
        pq = pq_index.pq
        centroids = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
        codes = faiss.vector_to_array(pq_index.codes).reshape(pq_index.ntotal, pq.code_size)
        return cls(rotation, centroids, codes)


def set_centroids(index: Any, centroids: np.ndarray) -> None:
    """Write ``centroids`` ``(m, 256, d / m)`` into a FAISS ``OPQ,PQ`` index, in place."""
    faiss = require("faiss")
    pq = faiss.downcast_index(index.index).pq
    faiss.copy_array_to_vector(np.ascontiguousarray(centroids, np.float32).ravel(), pq.centroids)
    if pq.transposed_centroids.size():  # a cached layout of the centroids, if FAISS made one
        pq.sync_transposed_centroids()


def run_jpq(
    run: Path, out: Path, cfg: JPQConfig, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Compress ``run``'s index and train JPQ into ``out`` (see the module); the report."""
    check_settings(run, cfg)
    with derived_output(run, out, "jpq", JPQ_CONFIG, cfg, resume, overwrite) as (out, data_dir):
        retriever = BiEncoder.load(run / "retriever")
        exact = FaissIndex.load(run / "index")
        posthoc = posthoc_index(out, exact, read_manifest(run / "index").get("encoder", {}), cfg)
        scale = float(json.loads((run / "config.json").read_text()).get("scale", 20.0))
        student, index = jpq_stage(out, out, run, data_dir, retriever, posthoc, cfg, scale)
        systems = {"uncompressed": (retriever, exact), "opq-pq": (retriever, posthoc),
                   "jpq": (student, index)}  # fmt: skip
        return _report(out, run, data_dir, systems, cfg)


def check_settings(run: Path, cfg: JPQConfig) -> None:
    """Refuse settings of ``cfg`` that ``run``'s index cannot take, before anything is
    written."""
    manifest = read_manifest(run / "index") if (run / "index" / "manifest.json").is_file() else {}
    dim, count, metric = manifest.get("dim"), manifest.get("count"), manifest.get("metric")
    if isinstance(dim, int) and dim % cfg.m:
        raise Ar2Error(
            f"m = {cfg.m} does not divide the vectors' dimension {dim}. Fix: --set m=N with N "
            f"a divisor of {dim} (bytes per document)"
        )
    if isinstance(count, int) and count < 256:
        raise Ar2Error(
            f"{count} documents: 8-bit PQ needs at least 256 to train its codebooks. "
            "Fix: compress a larger collection (a small one fits uncompressed)"
        )
    if metric not in (None, "ip"):
        raise Ar2Error(
            f"{run / 'index'}: a {metric} index; JPQ trains inner products. Fix: use a run "
            "whose index is searched by inner product (ar2's default)"
        )


def posthoc_index(
    out: Path, exact: FaissIndex, encoder: dict[str, Any], cfg: JPQConfig
) -> FaissIndex:
    """FAISS's OPQ + PQ of the run's vectors (the baseline, and JPQ's codes), kept in
    ``out/posthoc``."""
    folder = out / "posthoc"
    if (folder / "manifest.json").is_file():
        return FaissIndex.load(folder)
    vectors = float_vectors(exact)
    factory = pq_factory(cfg.m)
    log.info("compressing %d vectors with %s", len(vectors), factory)
    faiss = require("faiss")
    index = faiss.index_factory(vectors.shape[1], factory, faiss_metric(exact.metric))
    _train_quietly(index, vectors[training_rows(len(vectors))])
    for start in range(0, len(vectors), ADD_CHUNK):
        index.add(vectors[start : start + ADD_CHUNK])
    config = IndexConfig(factory=factory, refine=0)
    posthoc = FaissIndex(index, list(exact.ids), exact.metric, factory, config)
    posthoc.save(folder, {"encoder": encoder, "jpq": {"m": cfg.m, "trained": False}})
    return posthoc


def _train_quietly(index: Any, sample: np.ndarray) -> None:
    """Train an ``OPQ,PQ`` index on ``sample`` as ``index.train`` does, with FAISS's line per
    k-means run about a small sample (under 39 points per centroid) made one warning: the
    rotation is trained with a quantizer of its own, then the index's quantizer with FAISS's
    default iterations."""
    faiss = require("faiss")
    pq = faiss.downcast_index(index.index).pq
    if len(sample) < 39 * pq.ksub:
        log.warning(
            "%d vectors train %d centroids per codebook (FAISS advises at least %d): the "
            "post-hoc codebooks are fit on few points, as on any small collection",
            len(sample), pq.ksub, 39 * pq.ksub,
        )  # fmt: skip
    opq = faiss.downcast_VectorTransform(index.chain.at(0))
    own = faiss.ProductQuantizer(pq.d, pq.M, pq.nbits)  # OPQ sets its iterations on it
    own.cp.min_points_per_centroid = 1
    opq.pq = own
    opq.train(sample)
    opq.pq = None
    pq.cp.min_points_per_centroid = 1
    index.train(sample)  # the rotation is trained: the index's quantizer, on rotated vectors


def jpq_stage(
    out: Path, into: Path, run: Path, data_dir: Path, retriever: BiEncoder,
    posthoc: FaissIndex, cfg: JPQConfig, scale: float, stage: str = STAGE,
) -> tuple[BiEncoder, FaissIndex]:  # fmt: skip
    """JPQ's training (the module's step 2) of ``retriever``'s query tower and the centroids
    of ``posthoc`` (an ``OPQ,PQ`` index of ``retriever``'s documents, whose rotation and codes
    stay fixed), over the training queries of ``run``, as stage ``stage`` of the output
    ``out`` (its checkpoints and metrics); the trained query tower and index are saved in
    ``into/retriever`` and ``into/index``."""
    final, saved = into / "retriever", into / "index"
    if final.is_dir() and (saved / "manifest.json").is_file():
        return BiEncoder.load(final), FaissIndex.load(saved)
    faiss = require("faiss")
    queries, positives = training_queries(run, data_dir, posthoc.ids)
    parts = PQParts.of(posthoc.index)
    index = faiss.clone_index(posthoc.index)
    model = JPQModel(copy.deepcopy(retriever.query_model), parts)
    student = BiEncoder(retriever.doc_model, retriever.tokenizer, retriever.config, model.query,
                        source=retriever.source)  # fmt: skip
    model.to(student.device)

    def search(vectors: np.ndarray, k: int) -> np.ndarray:
        set_centroids(index, model.centroids.detach().cpu().numpy())  # the index as trained
        return index.search(vectors, k)[1]  # type: ignore[no-any-return]

    def score(vectors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return scale * model.scores(vectors, rows)  # (B, C)

    loss = step_loss(student, queries, positives, search, score, cfg, stage)
    settings = dataclasses.replace(cfg.stage, steps=cfg.stage.steps_for(len(queries)))
    stage_log = train_stage(out, stage, {"jpq": model}, settings, loss, cfg)
    set_centroids(index, model.centroids.detach().cpu().numpy())
    student.save(final)
    trained = FaissIndex(index, list(posthoc.ids), posthoc.metric, posthoc.factory,
                         posthoc.config)  # fmt: skip
    student = BiEncoder.load(final)
    MetricsLog(out / "metrics.jsonl").write(stage_record(stage, 0, "jpq", stage_log))
    _save_index(trained, saved, student, data_dir, cfg, stage)
    return student, trained


class JPQModel(torch.nn.Module):
    """What JPQ trains: the query tower (``query``) and the centroids (``centroids``,
    ``(m, 256, d / m)``). The rotation ``(d, d)`` and the codes ``(n, m)``, one byte each,
    are fixed buffers, left out of checkpoints (the post-hoc index holds them)."""

    rotation: torch.Tensor
    codes: torch.Tensor

    def __init__(self, query: Any, parts: PQParts) -> None:
        super().__init__()
        self.query = query
        self.centroids = torch.nn.Parameter(torch.from_numpy(parts.centroids.copy()))
        self.register_buffer("rotation", torch.from_numpy(parts.rotation.copy()), False)
        self.register_buffer("codes", torch.from_numpy(parts.codes.copy()), False)  # uint8

    def scores(self, vectors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` dot products of query vectors ``(B, d)`` with the reconstructions of the
        candidate documents (``(B, C)`` row numbers) in the rotated space FAISS searches."""
        m = self.centroids.shape[0]
        codes = self.codes[candidates].long()  # (B, C, m)
        books = torch.arange(m, device=codes.device)  # (m,)
        recon = self.centroids[books, codes].flatten(2)  # (B, C, d)
        rotated = vectors.float() @ self.rotation.T  # (B, d)
        return torch.einsum("bd,bcd->bc", rotated, recon)  # (B, C)


def _save_index(
    index: FaissIndex, folder: Path, student: BiEncoder, data_dir: Path, cfg: JPQConfig,
    stage: str = STAGE,
) -> None:  # fmt: skip
    """The trained index with its documents; its manifest names the trained query tower, and
    its block is named after the method whose stage trained it (``jpq``, or ``repconc`` for
    RepCONC's ``repconc-jpq``)."""
    from ar2.data.beir import iter_corpus

    docs = iter_corpus(data_dir / "corpus.jsonl", warn=False)
    method = stage.split("-")[0]
    extra = {"encoder": student.describe(), "truncation": student.truncation(),
             method: {"m": cfg.m, "trained": True, "stage": stage,
                      "config": dataclasses.asdict(cfg)}}  # fmt: skip
    index.save(folder, extra, docs)


def _report(
    out: Path, run: Path, data_dir: Path, systems: dict[str, tuple[BiEncoder, FaissIndex]],
    cfg: JPQConfig,
) -> dict[str, Any]:  # fmt: skip
    pairs = [("jpq", "uncompressed"), ("opq-pq", "uncompressed"), ("jpq", "opq-pq")]
    results: dict[str, Any] = {"m": cfg.m, "bytes_per_doc": _sizes(systems)}
    results |= measure(run, data_dir, systems, pairs, out)
    atomic_write_json(out / "report.json", results)
    atomic_write_text(out / "report.md", _markdown(results, out))
    return results


def _sizes(systems: dict[str, tuple[BiEncoder, FaissIndex]]) -> dict[str, int]:
    """Bytes of each system's codes per document (FAISS's ``sa_code_size``): what the index
    holds per document, beside fixed parts (the rotation and centroids: ``4 (d^2 + 256 d)``
    bytes in all)."""
    return {name: int(index.index.sa_code_size()) for name, (_, index) in systems.items()}


def _markdown(r: dict[str, Any], out: Path) -> str:
    size = r["bytes_per_doc"]
    lines = [
        f"# JPQ: {r['m']} bytes per document", "",
        "| split | queries | " + " | ".join(f"{s} {MEASURE}" for s in SYSTEMS)
        + " | jpq - uncompressed (p) | opq-pq - uncompressed (p) | jpq - opq-pq (p) |",
        "|---|---:|" + "---:|" * (len(SYSTEMS) + 3),
    ]  # fmt: skip
    for split in ("dev", "test"):
        if split in r:
            s = r[split]
            cells = [f"{s[MEASURE][name]:.4f}" for name in SYSTEMS]
            cells += [f"{t['diff']:+.4f} ({t['p']:.3g})" for t in s["tests"].values()]
            lines.append(f"| {split} | {s['queries']} | " + " | ".join(cells) + " |")
    lines += ["", "Index bytes per document: "
              + ", ".join(f"{name} {size[name]}" for name in SYSTEMS) + ".", "",
              f"Serve it: `ar2 serve {out / 'index'}`"]  # fmt: skip
    return "\n".join(lines) + "\n"
