"""CrossEncoder: the ranker, one relevance logit per (query, document) pair."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
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
    pad_batch,
    pick_device,
    use_bf16,
)
from ar2.types import Doc

if TYPE_CHECKING:
    import torch

_IDENTITY = "torch.nn.modules.linear.Identity"


class CrossEncoder:
    """Sequence classification with one label over ``[CLS] query [SEP] title text [SEP]``.

    ``score`` returns raw logits (higher is more relevant). Saved folders load as they are with
    ``sentence_transformers.CrossEncoder(path)``, whose ``predict`` then returns the same logits
    (the saved activation is the identity).

    Loading a plain encoder (for example all-MiniLM-L6-v2, as no pretrained cross-encoder is
    available offline) adds a new linear head, initialised N(0, 0.02) with zero bias.

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

    @classmethod
    def load(
        cls, path: str | Path | None = None, *, warn_new_head: bool = True, **overrides: Any
    ) -> CrossEncoder:
        """Load a local folder (default: all-MiniLM-L6-v2 with a new head). A folder without a
        one-label head gets a new one, with a warning unless ``warn_new_head`` is False (a
        caller that trains the head next)."""
        from ar2.encoders.bi_encoder import default_model_path

        path = _hf.check_model_dir(path or default_model_path())
        manifest = _hf.read_json(path / _hf.MANIFEST)
        saved = manifest.get("config", {}) if manifest.get("kind") == "cross_encoder" else {}
        config = dataclasses.replace(RankerConfig(**saved), **overrides)  # a bi-encoder's: unused
        config = _hf.fit_lengths(path, config, ("max_length",), overrides)
        if warn_new_head and not _is_one_label_classifier(path):
            warnings.warn(
                f"{path} has no one-label classification head: a new head is initialised. "
                "Train the ranker before trusting its scores.",
                stacklevel=2,
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer, model = _hf.load_tokenizer_and_model(
                path, task="sequence-classification", num_labels=1, ignore_mismatched_sizes=True
            )
        return cls(model, tokenizer, config, source=str(path.resolve()))

    def score(self, query: str, docs: Sequence[Doc | str]) -> np.ndarray:
        """Relevance logits of ``docs`` for ``query``: float32 array of shape ``(len(docs),)``."""
        return self.score_pairs([(query, self.doc_text(d)) for d in docs])

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Logits for many (query, document text) pairs, length-sorted into batches."""
        if not pairs:  # a query with no hits (the tokenizer fails on an empty batch)
            return np.zeros(0, dtype=np.float32)
        torch = require("torch")
        enc = self.tokenizer(
            [q for q, _ in pairs],
            [d for _, d in pairs],
            truncation="longest_first",
            max_length=self.config.max_length,
        )
        ids, types = enc["input_ids"], enc.get("token_type_ids")
        out = np.empty(len(pairs), dtype=np.float32)
        bf16 = use_bf16(self.config.precision, self.device)
        with eval_mode(self.model):
            for rows in length_sorted_batches([len(x) for x in ids], self.config.batch_size):
                batch_types = [types[i] for i in rows] if types is not None else None
                batch = pad_batch(
                    [ids[i] for i in rows], self.tokenizer.pad_token_id, self.device, batch_types
                )
                with torch.inference_mode(), autocast(self.device, bf16):
                    logits = self.model(**batch).logits  # (batch, 1)
                out[rows] = logits[:, 0].float().cpu().numpy()
        return out

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
        ).to(self.device)
        with autocast(self.device, use_bf16(self.config.precision, self.device)):
            return self.model(**batch).logits[:, 0].float()  # (n,)

    def doc_text(self, doc: Doc | str) -> str:
        """The document side of a pair: ``title + title_sep + text``."""
        return doc.full_text(self.config.title_sep) if isinstance(doc, Doc) else doc

    def save(self, path: str | Path) -> None:
        """Save atomically as a Hugging Face folder ``sentence_transformers.CrossEncoder`` loads."""
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


def _is_one_label_classifier(path: Path) -> bool:
    config = _hf.read_json(path / "config.json")
    archs = config.get("architectures") or []
    one_label = len(config.get("id2label", {"0": ""})) == 1 or config.get("num_labels") == 1
    return any(a.endswith("ForSequenceClassification") for a in archs) and one_label
