"""Pooling of token states into one vector: small functions chosen by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states where ``mask`` is 1.

    Args:
        hidden: ``(batch, seq, dim)`` last-layer states.
        mask: ``(batch, seq)`` attention mask.

    Example:
        >>> import torch
        >>> h = torch.tensor([[[1.0], [3.0], [100.0]]]); m = torch.tensor([[1, 1, 0]])
        >>> mean_pool(h, m).tolist()
        [[2.0]]
    """
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    summed = (hidden * weights).sum(dim=1)  # (batch, dim)
    return summed / weights.sum(dim=1).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The first (``[CLS]``) token's state, as DPR and AR2 use it (no pooler layer).

    Example:
        >>> import torch
        >>> cls_pool(torch.tensor([[[1.0], [3.0]]]), torch.tensor([[1, 1]])).tolist()
        [[1.0]]
    """
    return hidden[:, 0]  # (batch, dim)


POOLERS: dict[str, Callable[..., torch.Tensor]] = {"mean": mean_pool, "cls": cls_pool}


def get_pooler(name: str) -> Callable[..., torch.Tensor]:
    """Return the pooling function called ``name``; unknown names list the valid ones."""
    try:
        return POOLERS[name]
    except KeyError:
        raise ValueError(f"unknown pooling {name!r}; choose one of {sorted(POOLERS)}") from None
