"""CrossEncoder: the ranker, one relevance logit per (query, document) pair."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ar2 import __version__
from ar2._io import atomic_dir, atomic_write_json
from ar2._optional import require
from ar2.config import RankerConfig
from ar2.encoders import _hf
from ar2.encoders._runtime import (
    autocast,
    eval_mode,
    length_sorted_batches,
    pad_arrays,
    pick_device,
    use_bf16,
)
from ar2.encoders.pooling import mean_pool
from ar2.types import Doc

if TYPE_CHECKING:
    import torch

    from ar2.encoders.onnx_runtime import OnnxGraph

_IDENTITY = "torch.nn.modules.linear.Identity"


def classifier_logits(model: Any, batch: dict[str, Any], boundary: Any, scale: float) -> Any:
    """The ``"classifier"`` head: a sequence-classification model's one logit, ``(n,)``."""
    return model(**batch).logits[:, 0]


def cosine_logits(model: Any, batch: dict[str, Any], boundary: Any, scale: float) -> Any:
    """The ``"cosine"`` head: ``scale · cos(mean(query segment), mean(document segment))`` of
    one joint pass, ``(n,)``. Tokens before ``boundary`` (``(n,)``, the first document token)
    are the query's, ``[CLS]`` and the first ``[SEP]`` included, as a bi-encoder pools them;
    token types are all 0, as the bi-encoder saw them. Were attention kept inside each segment
    (positions restarted, a ``[CLS]`` each) this would be the bi-encoder's score: a
    bi-encoder's weights rank well before any step (``benchmarks/ranker_head_probe.py``)."""
    torch = require("torch")
    mask = batch["attention_mask"]  # (n, seq)
    types = torch.zeros_like(batch["input_ids"])  # (n, seq)
    hidden = model(input_ids=batch["input_ids"], attention_mask=mask, token_type_ids=types)
    hidden = hidden.last_hidden_state  # (n, seq, dim)
    positions = torch.arange(mask.shape[1], device=mask.device)[None]  # (1, seq)
    query = mean_pool(hidden, mask * (positions < boundary[:, None]))  # (n, dim)
    doc = mean_pool(hidden, mask * (positions >= boundary[:, None]))  # (n, dim)
    return scale * torch.nn.functional.cosine_similarity(query, doc, dim=-1)


HEADS: dict[str, tuple[str, Callable[..., Any]]] = {
    "classifier": ("sequence-classification", classifier_logits),
    "cosine": ("base", cosine_logits),
}
"""Ranker heads by name: the model class they load (``_hf.load_tokenizer_and_model``'s task)
and the function from a tokenized batch to logits."""


class CrossEncoder:
    """A joint pass over ``[CLS] query [SEP] title text [SEP]``, one relevance logit per pair.

    ``score`` returns raw logits (higher is more relevant). The head is a setting
    (``RankerConfig.head``, :data:`HEADS`):

    - ``"classifier"`` (the default): sequence classification with one label. Saved folders load
      as they are with ``sentence_transformers.CrossEncoder(path)``, whose ``predict`` then
      returns the same logits (the saved activation is the identity). Loading a plain encoder
      (for example all-MiniLM-L6-v2, as no pretrained cross-encoder is available offline) adds
      a new linear head, initialised N(0, 0.02) with zero bias.
    - ``"cosine"``: no new weights; the scaled cosine of the pooled query and document segments
      (:func:`cosine_logits`). Saved folders hold a plain encoder and ``manifest.json``.

    Example:
        >>> ranker = CrossEncoder.load(tiny_model_dir)  # doctest: +SKIP
        >>> ranker.score("cats", [Doc("d1", "cats eat fish")]).shape  # doctest: +SKIP
        (1,)
    """

    def __init__(self, model: Any, tokenizer: Any, config: RankerConfig, source: str = "") -> None:
        self.device = pick_device()
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.config = config
        self.source = source
        self.graph: OnnxGraph | None = None  # set by use_backend: scoring runs in ONNX Runtime

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        warn_new_head: bool = True,
        backend: str = "torch",
        **overrides: Any,
    ) -> CrossEncoder:
        """Load a local folder (default: all-MiniLM-L6-v2 with a new head). A folder without a
        one-label head gets a new one, with a warning unless ``warn_new_head`` is False (a
        caller that trains the head next). ``backend``: see :meth:`use_backend`."""
        from ar2.encoders.bi_encoder import default_model_path

        path = _hf.check_model_dir(path or default_model_path())
        manifest = _hf.read_json(path / _hf.MANIFEST)
        saved = manifest.get("config", {}) if manifest.get("kind") == "cross_encoder" else {}
        config = dataclasses.replace(RankerConfig(**saved), **overrides)  # a bi-encoder's: unused
        config = _hf.fit_lengths(path, config, ("max_length",), overrides)
        task = HEADS[config.head][0]
        new_head = task == "sequence-classification" and not _is_one_label_classifier(path)
        if warn_new_head and new_head:
            warnings.warn(
                f"{path} has no one-label classification head: a new head is initialised. "
                "Train the ranker before trusting its scores.",
                stacklevel=2,
            )
        kwargs = {"num_labels": 1, "ignore_mismatched_sizes": True} if task != "base" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer, model = _hf.load_tokenizer_and_model(path, task=task, **kwargs)
        ranker = cls(model, tokenizer, config, source=str(path.resolve()))
        return ranker.use_backend(backend) if backend != "torch" else ranker

    def score(self, query: str, docs: Sequence[Doc | str]) -> np.ndarray:
        """Relevance logits of ``docs`` for ``query``: float32 array of shape ``(len(docs),)``."""
        return self.score_pairs([(query, self.doc_text(d)) for d in docs])

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Logits for many (query, document text) pairs, length-sorted into batches."""
        if not pairs:  # a query with no hits (the tokenizer fails on an empty batch)
            return np.zeros(0, dtype=np.float32)
        ids, types, boundary = self._tokenize(pairs)
        out = np.empty(len(pairs), dtype=np.float32)
        for rows in length_sorted_batches([len(x) for x in ids], self.config.batch_size):
            batch_types = [types[i] for i in rows] if types is not None else None
            batch = pad_arrays([ids[i] for i in rows], self.tokenizer.pad_token_id, batch_types)
            out[rows] = self._forward(batch, boundary[rows])
        return out

    def pair_arrays(self, pairs: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
        """One padded batch of pairs as arrays: ``input_ids``, ``attention_mask``,
        ``token_type_ids`` (where the tokenizer makes them), ``(n, width)``, and ``boundary``,
        ``(n,)``, each pair's first document token."""
        ids, types, boundary = self._tokenize(pairs)
        return pad_arrays(ids, self.tokenizer.pad_token_id, types) | {"boundary": boundary}

    def use_backend(self, backend: str) -> CrossEncoder:
        """Score through ``backend`` (:data:`~ar2.encoders.onnx_runtime.BACKENDS`): ``torch``,
        or an ONNX Runtime graph of the model and its head (exported and checked against
        torch once, then cached). ``auto`` keeps torch: 20 pairs scored 0.89x as fast on
        ONNX Runtime (``docs/benchmarks.md``); ask for ``onnx`` or ``onnx-int8`` by name."""
        from ar2.encoders import onnx_runtime

        self.graph = None
        self.graph = onnx_runtime.attach(
            partial(onnx_runtime.ranker_spec, self), backend, self.device, auto=False
        )
        return self

    def _tokenize(self, pairs: Sequence[tuple[str, str]]) -> tuple[Any, Any, np.ndarray]:
        enc = self.tokenizer(
            [q for q, _ in pairs],
            [d for _, d in pairs],
            truncation="longest_first",
            max_length=self.config.max_length,
        )
        return enc["input_ids"], enc.get("token_type_ids"), _boundaries(enc)

    def _forward(self, batch: dict[str, np.ndarray], boundary: np.ndarray) -> np.ndarray:
        """``(n,)`` logits of a padded batch, through the ONNX graph or torch."""
        if self.graph is not None:
            return self.graph.run(batch | {"boundary": boundary})
        torch = require("torch")
        tensors = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}
        bf16 = use_bf16(self.config.precision, self.device)
        with eval_mode(self.model), torch.inference_mode(), autocast(self.device, bf16):
            logits = self._head(tensors, torch.from_numpy(boundary).to(self.device))  # (n,)
        return logits.float().cpu().numpy()  # type: ignore[no-any-return]

    def logits(
        self, pairs: Sequence[tuple[str, str]], max_length: int | None = None
    ) -> torch.Tensor:
        """Training forward pass: ``(n,)`` logits that carry gradients (pairs cut to
        ``max_length``, default ``config.max_length``)."""
        batch = self.tokenizer(
            [q for q, _ in pairs],
            [d for _, d in pairs],
            padding=True,
            truncation="longest_first",
            max_length=max_length or self.config.max_length,
            return_tensors="pt",
        )
        boundary = require("torch").from_numpy(_boundaries(batch)).to(self.device)  # (n,)
        batch = batch.to(self.device)
        with autocast(self.device, use_bf16(self.config.precision, self.device)):
            return self._head(dict(batch), boundary).float()  # (n,)

    def _head(self, batch: dict[str, Any], boundary: Any) -> Any:
        return HEADS[self.config.head][1](self.model, batch, boundary, self.config.scale)

    def doc_text(self, doc: Doc | str) -> str:
        """The document side of a pair: ``title + title_sep + text``."""
        return doc.full_text(self.config.title_sep) if isinstance(doc, Doc) else doc

    def save(self, path: str | Path) -> None:
        """Save atomically as a Hugging Face folder (with the classifier head, one
        ``sentence_transformers.CrossEncoder`` loads)."""
        if self.config.head == "classifier":
            self.model.config.sentence_transformers = {"activation_fn": _IDENTITY, "version": "ar2"}
        with atomic_dir(path) as tmp:
            self.model.save_pretrained(str(tmp), safe_serialization=True)
            self.tokenizer.save_pretrained(str(tmp))
            atomic_write_json(tmp / _hf.MANIFEST, self.describe())

    def describe(self) -> dict[str, Any]:
        """What a pipeline manifest records about this ranker."""
        return {
            "kind": "cross_encoder",
            "ar2_version": __version__,
            "source": self.source,
            "config": dataclasses.asdict(self.config),
        }

    def backend(self) -> dict[str, Any]:
        """Where scoring runs, for a service's manifest: ``torch``, or the ONNX graph's record
        (its file and its check against torch)."""
        return self.graph.describe() if self.graph is not None else {"backend": "torch"}


def _boundaries(enc: Any) -> np.ndarray:
    """Each pair's first document token (``sequence_ids`` = 1), ``(n,)`` int64."""
    rows = [enc.sequence_ids(i) for i in range(len(enc["input_ids"]))]
    return np.array([ids.index(1) if 1 in ids else len(ids) for ids in rows], dtype=np.int64)


def _is_one_label_classifier(path: Path) -> bool:
    config = _hf.read_json(path / "config.json")
    archs = config.get("architectures") or []
    one_label = len(config.get("id2label", {"0": ""})) == 1 or config.get("num_labels") == 1
    return any(a.endswith("ForSequenceClassification") for a in archs) and one_label
