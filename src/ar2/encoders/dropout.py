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

BITS = 16
LEVELS = 1 << BITS


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
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate p = {p} must be in [0, 1)")
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
        return x * ((bits >= self.threshold).to(x.dtype) * self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def is_attention_dropout(parent: Any, parent_name: str) -> bool:
    """True for the dropout on attention probabilities: a child of BERT-family ``*.self``
    modules, or of any module whose class name ends in ``SelfAttention``/``Attention`` and
    that holds query and key projections."""
    if parent_name.endswith(".self") or parent_name == "self":
        return True
    kind = type(parent).__name__
    return kind.endswith("Attention") and hasattr(parent, "query") and hasattr(parent, "key")


def for_training(model: Any, attention: float | None = None, fast: bool = False) -> Any:
    """Set ``model``'s dropout for training, in place: the attention probabilities' rate
    (``None`` keeps it) and, with ``fast``, :class:`FastDropout` in the other dropout layers.
    Returns ``model``."""
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, (torch.nn.Dropout, FastDropout)):
                continue
            if is_attention_dropout(parent, parent_name):
                if attention is not None:
                    child.p = attention
            elif fast and isinstance(child, torch.nn.Dropout):
                setattr(parent, name, FastDropout(child.p))
    return model


def rates(model: Any) -> dict[str, float]:
    """``{"attention": p, "other": p}``: the largest rate of each kind of dropout in ``model``
    (for a report of what a run trained with)."""
    found = {"attention": 0.0, "other": 0.0}
    for parent_name, parent in model.named_modules():
        for child in parent.children():
            if isinstance(child, (torch.nn.Dropout, FastDropout)):
                kind = "attention" if is_attention_dropout(parent, parent_name) else "other"
                found[kind] = max(found[kind], float(child.p))
    return found
