"""Dropout while training: the attention probabilities' rate, and masks that are cheap on a CPU.

On a 2-core CPU a G0 step spends a fifth of its time drawing dropout masks (torch's
Bernoulli sampler, one call per dropout layer), and attention dropout forces the unfused
attention path. Two settings of :class:`ar2.config.AR2Config` act on that, measured in
``docs/benchmarks.md``:

- ``attention_dropout``: the rate on the attention probabilities (``None``: the model's own).
  At 0 the fused attention kernel runs.
- ``fast_dropout``: the other dropout layers draw their masks from 16 random bits per element,
  four to a 64-bit word (:class:`FastDropout`): the same keep rate within 1/65536, another
  random stream.

Both are set on the modules in memory for training; a saved model's files do not change.
This module imports torch: the training code imports it where it is used.
"""

from __future__ import annotations

from typing import Any

import torch

from ar2.errors import Ar2Error

BITS = 16
LEVELS = 1 << BITS
MAX_RATE = (LEVELS - 1) / LEVELS
PROJECTIONS = (("query", "key"), ("q", "k"), ("q_lin", "k_lin"), ("q_proj", "k_proj"))
"""Names of the query and key projections an attention module holds (BERT and RoBERTa,
MPNet, DistilBERT, most others)."""


class FastDropout(torch.nn.Module):
    """Inverted dropout at rate ``round(p * 65536) / 65536``: an element is kept when its 16
    random bits, read as a signed integer, are at or above a threshold. The bits come from
    torch's generator (seeded per step by the trainer), four elements to a 64-bit draw.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> drop = FastDropout(0.25).train()
        >>> y = drop(torch.ones(100_000))
        >>> round(float((y == 0).float().mean()), 2), float(y.max())
        (0.25, 1.3333333730697632)
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= MAX_RATE:
            raise ValueError(
                f"dropout rate p = {p}. Fix: use a rate in [0, {MAX_RATE:.6f}] (a 16-bit mask "
                "cannot drop every element)"
            )
        self.p = p
        dropped = round(p * LEVELS)
        self.threshold = dropped - LEVELS // 2  # int16 values below it are dropped
        self.scale = LEVELS / (LEVELS - dropped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == -(LEVELS // 2):
            return x
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64,
                              device=x.device)  # fmt: skip
        bits = words.view(torch.int16)[:n].view(x.shape)  # (*x.shape,) 16 random bits each
        keep = bits >= self.threshold  # (*x.shape,)
        if x.dtype in (torch.float32, torch.float64):
            return x * (keep.to(x.dtype) * self.scale)
        return (x.float() * (keep.float() * self.scale)).to(x.dtype)  # one rounding in bf16

    def extra_repr(self) -> str:
        return f"p={self.p}"


def is_attention_dropout(parent: Any, parent_name: str) -> bool:
    """True for the dropout on attention probabilities: a child of a BERT-family ``*.self``
    module, or of a module holding query and key projections (:data:`PROJECTIONS`).

    Example:
        >>> class Attention(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.q, self.k = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        >>> is_attention_dropout(Attention(), "layer.0.attn"), is_attention_dropout(None, "output")
        (True, False)
    """
    if parent_name.endswith(".self") or parent_name == "self":
        return True
    return any(hasattr(parent, q) and hasattr(parent, k) for q, k in PROJECTIONS)


def for_training(model: Any, attention: float | None = None, fast: bool = False) -> Any:
    """Set ``model``'s dropout for training, in place: the attention probabilities' rate
    (``None`` keeps it) and, with ``fast`` on a CPU, :class:`FastDropout` in the other dropout
    layers (a GPU keeps its fused dropout kernel). Returns ``model``.

    Raises:
        Ar2Error: a rate for attention dropout was asked, but no attention layer was found.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(hidden_size=8, num_hidden_layers=1,
        ...                             num_attention_heads=2, intermediate_size=8))
        >>> rates(for_training(bert, attention=0.0, fast=True))
        {'attention': 0.0, 'other': 0.1}
    """
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    found = False
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, (torch.nn.Dropout, FastDropout)):
                continue
            if is_attention_dropout(parent, parent_name):
                found = True
                if attention is not None:
                    child.p = attention
                    if hasattr(parent, "dropout_prob"):  # transformers 4.4x reads this one
                        parent.dropout_prob = attention
            elif fast and on_cpu and isinstance(child, torch.nn.Dropout):
                setattr(parent, name, FastDropout(child.p))
    if attention is not None and not found:
        raise Ar2Error(
            f"attention_dropout = {attention}, but {type(model).__name__} has no attention "
            "dropout ar2 recognises. Fix: leave attention_dropout unset (--set "
            "attention_dropout=none) for this model"
        )
    return model


def rates(model: Any) -> dict[str, float]:
    """``{"attention": p, "other": p}``: the largest rate of each kind of dropout in ``model``
    (example: :func:`for_training`)."""
    found = {"attention": 0.0, "other": 0.0}
    for parent_name, parent in model.named_modules():
        for child in parent.children():
            if isinstance(child, (torch.nn.Dropout, FastDropout)):
                kind = "attention" if is_attention_dropout(parent, parent_name) else "other"
                found[kind] = max(found[kind], float(child.p))
    return found
