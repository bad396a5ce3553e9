"""SearchService: every search mode a run (or an index) offers, loaded once, thread-safe.

A service answers ``search(queries, k, mode, rerank_k)`` with the same components ``ar2 eval``
and ``ar2 train`` use: the dense retriever with its index's encoder settings, BM25, their
reciprocal rank fusion (``hybrid``) and the ranker with its tuned fusion weight.

Example:
    >>> from ar2.index import BM25Index
    >>> from ar2.pipeline import BM25Retriever
    >>> docs = [Doc("d1", "cats eat fish", "Cats"), Doc("d2", "dogs chase balls", "Dogs")]
    >>> service = SearchService(docs, {"bm25": BM25Retriever(BM25Index.build(docs))})
    >>> service.search([Query("q", "what do cats eat")], k=1, mode="bm25")
    {'q': [Hit(doc_id='d1', score=0.67...)]}
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ar2 import __version__
from ar2.errors import Ar2Error
from ar2.pipeline import Ranker, Retriever, SearchPipeline
from ar2.retrievers import KINDS
from ar2.types import Doc, Query, Run

log = logging.getLogger(__name__)

MODES = tuple(KINDS)
"""Search modes: the retriever kinds (:data:`ar2.retrievers.KINDS`), the first the default."""

DEFAULT_RERANK_K = 20
"""Hits reranked per query when a ranker is given without a run's ``rerank_k``."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; larger requests get a 4xx answer, never a slow one."""

    max_query_chars: int = 1000
    max_k: int = 100
    max_rerank_k: int = 100
    max_batch: int = 32
    max_body_bytes: int = 256 * 1024
    snippet_chars: int = 240
    max_pending: int = 64
    """Searches queued or running; one more gets 503 with Retry-After (back-pressure)."""


class SearchService:
    """Retrievers by mode, an optional ranker, the documents, and what built them.

    ``search`` may be called from many threads: every search runs, one at a time, on one
    worker thread that the service owns. Tokenizers and stemmers are not thread-safe; and each
    thread that runs torch gets its own OpenMP team, whose idle threads then compete with the
    working one (on 2 cores, torch calls from a pool of threads took 10 ms where one thread
    took 5). An HTTP server still overlaps parsing and sending with the computation.
    """

    def __init__(
        self,
        docs: Mapping[str, Doc] | Iterable[Doc],
        retrievers: Mapping[str, Retriever],
        ranker: Ranker | None = None,
        default_rerank_k: int | None = None,
        info: Mapping[str, Any] | None = None,
        updates: bool = False,
    ) -> None:
        unknown = sorted(set(retrievers) - set(MODES))
        if unknown or not retrievers:
            raise ValueError(f"retrievers must be keyed by modes {MODES}; got {sorted(retrievers)}")
        if updates:
            retrievers = _updatable(retrievers)
        self.updatable = updates
        """Whether documents may be added and deleted (:meth:`upsert`, :meth:`delete`)."""
        self.docs = docs if isinstance(docs, Mapping) else {d.id: d for d in docs}
        self.modes = tuple(m for m in MODES if m in retrievers)
        self.has_ranker = ranker is not None
        rerank_k = DEFAULT_RERANK_K if default_rerank_k is None else default_rerank_k
        self.default_rerank_k = rerank_k if ranker is not None else 0
        self.default_mode = self.modes[0]
        self._pipelines = {
            m: SearchPipeline(r, ranker, self.default_rerank_k) for m, r in retrievers.items()
        }
        self._info = dict(info or {})
        self._worker: ThreadPoolExecutor | None = None
        self._worker_lock = threading.Lock()
        self.pending = 0
        """Searches submitted and not finished (the HTTP app refuses more than its limit)."""

    @classmethod
    def load(
        cls,
        path: str | Path,
        reranker: str | Path | None = None,
        retriever: str | Path | None = None,
        rerank_k: int | None = None,
        backend: str = "torch",
        updates: bool = False,
    ) -> SearchService:
        """Load a finished ``ar2 train`` run folder or an ``ar2 index`` folder.

        A run serves its final retriever and index, BM25 over the index's documents, and its
        ranker with the ``rerank_k`` it was evaluated with. ``reranker`` adds (or replaces) the
        ranker; ``retriever`` replaces the encoder path an index's manifest names; ``rerank_k``
        replaces the default depth of reranking; ``backend`` is where queries are encoded and
        pairs scored (:data:`ar2.encoders.onnx_runtime.BACKENDS`), recorded in :meth:`info`;
        ``updates`` lets documents be added and deleted (an index in Milvus only).
        """
        path = Path(path)
        if not path.is_dir():
            raise Ar2Error(f"{path}: no such folder. Fix: give a run folder or an index folder")
        load = _load_run if (path / "config.json").is_file() and not (
            path / "manifest.json"
        ).is_file() else _load_index  # fmt: skip
        return load(path, reranker, retriever, rerank_k, backend, updates)

    def search(
        self, queries: Sequence[Query], k: int, mode: str | None = None, rerank_k: int | None = None
    ) -> Run:
        """The top ``k`` hits of each query by ``mode`` (default: the first available), the
        top ``rerank_k`` of them reranked (default: the service's; ``0``: none)."""
        return self.submit(queries, k, mode, rerank_k).result()

    def submit(
        self,
        queries: Sequence[Query],
        k: int,
        mode: str | None = None,
        rerank_k: int | None = None,
        then: Callable[[Run], Any] | None = None,
    ) -> Future[Any]:
        """:meth:`search` without waiting: the future of its run, or of ``then(run)`` (which
        runs on the worker thread too). ``asyncio.wrap_future`` makes it awaitable."""
        mode = mode or self.default_mode
        if mode not in self._pipelines:
            raise Ar2Error(f"mode {mode!r} is not served here; choose one of {list(self.modes)}")
        if rerank_k and not self.has_ranker:
            raise Ar2Error("this service has no ranker; set rerank_k to 0")
        pipeline = self._pipelines[mode]

        def work() -> Any:
            run = pipeline.run(queries, k, rerank_k=rerank_k)
            return then(run) if then else run

        return self._queue(work)

    def upsert(self, docs: Sequence[Doc]) -> Future[int]:
        """Encode ``docs`` and add them to the index, replacing those of the same id; the
        future of how many. Searches queued before see none of them, those after all."""
        retriever = self._updated()

        def work() -> int:
            vectors = retriever.encoder.encode_docs(docs)  # (n, dim)
            retriever.index.add(vectors, [d.id for d in docs], docs)
            self._forget([d.id for d in docs])
            return len(docs)

        return self._queue(work)

    def delete(self, ids: Sequence[str]) -> Future[int]:
        """Remove the documents ``ids`` from the index; the future of how many were there."""
        retriever = self._updated()

        def work() -> int:
            found: int = retriever.index.delete(ids)
            self._forget(ids)
            return found

        return self._queue(work)

    def _updated(self) -> Any:
        if not self.updatable:
            raise Ar2Error("this service takes no document updates. Fix: serve an index in "
                           "Milvus with --allow-updates")  # fmt: skip
        return self._pipelines["dense"].retriever

    def _forget(self, ids: Sequence[str]) -> None:
        forget = getattr(self.docs, "forget", None)  # a store's cache of recent documents
        if forget is not None:
            forget(ids)

    def _queue(self, work: Callable[[], Any]) -> Future[Any]:
        """Run ``work`` on the service's worker thread, after what is queued."""
        with self._worker_lock:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(1, thread_name_prefix="ar2-search")
            future = self._worker.submit(work)
            self.pending += 1
        future.add_done_callback(self._finished)
        return future

    def close(self) -> None:
        """Stop the worker thread once its queue is done (a later search starts a new one)."""
        with self._worker_lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=True)

    def _finished(self, future: Future[Any]) -> None:
        with self._worker_lock:
            self.pending -= 1

    def info(self) -> dict[str, Any]:
        """What is served and how it was built: modes, defaults, manifests, versions."""
        return {
            "ar2_version": __version__,
            "documents": len(self.docs),
            "modes": list(self.modes),
            "default_mode": self.default_mode,
            "ranker": self.has_ranker,
            "default_rerank_k": self.default_rerank_k,
            **self._info,
            "versions": dict(_versions()),  # a copy: the lookup is cached
        }


def _updatable(retrievers: Mapping[str, Retriever]) -> dict[str, Retriever]:
    """The modes a service that takes updates serves: ``dense``, over an index that can add
    and delete (Milvus). ``bm25`` and ``hybrid`` are left out: their index is built once, at
    start-up, and would not see the updates."""
    index = getattr(retrievers.get("dense"), "index", None)
    if not hasattr(index, "delete"):
        raise Ar2Error("document updates need a dense index in Milvus. Fix: build it with `ar2 "
                       "index DATA --kind dense --store milvus`, or serve without "
                       "--allow-updates")  # fmt: skip
    left = sorted(set(retrievers) - {"dense"})
    if left:
        log.info("with updates, only the dense mode is served (%s would miss them)", left)
    return {"dense": retrievers["dense"]}


def _load_run(
    run: Path,
    reranker: str | Path | None,
    retriever: str | Path | None,
    rerank_k: int | None,
    backend: str,
    updates: bool = False,
) -> SearchService:
    from ar2.retrievers import served

    if not (run / "retriever").is_dir() or not (run / "index" / "manifest.json").is_file():
        raise Ar2Error(
            f"{run}: the run has no final retriever and index yet. "
            f"Fix: finish it with `ar2 train DATA --out {run} --resume`"
        )
    config = _read_json(run / "config.json")
    encoder_dir = Path(retriever) if retriever else run / "retriever"
    ranker_dir = Path(reranker) if reranker else run / "ranker"
    docs, retrievers = served(run / "index", encoder_dir, backend, text_modes=not updates)
    # a ranker asked for must load (a typo is an error); the run's own is optional
    wanted = reranker or ranker_dir.is_dir()
    ranker = _load_ranker(ranker_dir, docs, backend) if wanted else None
    info = {
        "source": {"kind": "run", "path": str(run.resolve())},
        "manifests": _manifests(run / "index", encoder_dir, ranker_dir if ranker else None),
        "backends": _backends(retrievers, ranker),
        "training": {"config": config, "results": _results(run)},
    }
    rerank_k = config.get("rerank_k") if rerank_k is None else rerank_k
    return SearchService(docs, retrievers, ranker, rerank_k, info, updates)


def _load_index(
    index_dir: Path,
    reranker: str | Path | None,
    retriever: str | Path | None,
    rerank_k: int | None,
    backend: str,
    updates: bool = False,
) -> SearchService:
    from ar2.index import read_manifest
    from ar2.retrievers import served

    manifest = read_manifest(index_dir)
    docs, retrievers = served(index_dir, retriever, backend, text_modes=not updates)
    ranker = _load_ranker(Path(reranker), docs, backend) if reranker else None
    encoder = retriever or manifest.get("encoder", {}).get("source")
    info = {
        "source": {"kind": "index", "path": str(index_dir.resolve())},
        "manifests": _manifests(index_dir, encoder, reranker),
        "backends": _backends(retrievers, ranker),
    }
    return SearchService(docs, retrievers, ranker, rerank_k, info, updates)


def _load_ranker(path: Path, docs: Mapping[str, Doc], backend: str) -> Ranker:
    """A cross-encoder over ``docs``, reranking with the fusion weight in its manifest."""
    from ar2.encoders import CrossEncoder
    from ar2.pipeline import CrossEncoderRanker

    if not docs:
        raise Ar2Error(
            f"{path}: a ranker reads the documents, but the index stores none. "
            "Fix: rebuild the index with `ar2 index` (it stores corpus.jsonl)"
        )
    return CrossEncoderRanker(CrossEncoder.load(path, backend=backend), docs)


def _backends(retrievers: Mapping[str, Retriever], ranker: Ranker | None) -> dict[str, Any]:
    """Where the query encoder and the ranker run (``None`` where a part is absent)."""
    dense = retrievers.get("dense")
    encoder = getattr(dense, "encoder", None)
    model = getattr(ranker, "model", None)
    return {
        "query_encoder": encoder.backend() if encoder is not None else None,
        "ranker": model.backend() if model is not None else None,
    }


def _manifests(
    index_dir: Path, retriever: str | Path | None, ranker: str | Path | None
) -> dict[str, Any]:
    """The manifests of the index and the models (``None`` where a part is absent)."""
    from ar2.config import BM25Config

    out: dict[str, Any] = {"index": _read_json(index_dir / "manifest.json")}
    for name, folder in (("retriever", retriever), ("ranker", ranker)):
        file = Path(folder) / "manifest.json" if folder else None
        out[name] = _read_json(file) if file and file.is_file() else None
    if out["index"].get("kind") != "bm25":
        built = "at start-up from the index's documents, with these settings"
        out["bm25"] = {"built": built, "config": dataclasses.asdict(BM25Config())}
    return out


def _results(run: Path) -> Any:
    file = run / "report.json"
    return _read_json(file) if file.is_file() else None


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise Ar2Error(f"{file}: cannot read it ({err}). Fix: restore the file") from err


@cache
def _versions() -> dict[str, str]:
    """Installed versions of the libraries a search goes through."""
    from importlib import metadata

    found = {}
    names = ("torch", "transformers", "onnxruntime", "faiss-cpu", "faiss-gpu", "bm25s", "fastapi",
             "uvicorn")  # fmt: skip
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
