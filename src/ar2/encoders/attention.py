"""Which attention kernel a model runs while it trains.

transformers' BERT calls torch's scaled-dot-product attention, and torch picks the kernel: on a
CPU, with no attention dropout, the fused (flash) kernel. Its backward pass is slow on some
CPUs: on a 2-core Intel Sapphire Rapids machine in bf16 it took 47% of a G0 step, where the
unfused (math) kernel's matrix products run on AMX (docs/benchmarks.md, issue 13). Both kernels
compute the same function; they round differently.

The setting ``train_attention`` of the training configs chooses, for the passes a model makes
in training mode only; inference (indexing, the teacher's forward, reranking) keeps torch's
choice:

- ``"torch"``: torch's choice (the behaviour before this setting);
- ``"flash"`` or ``"math"``: that kernel;
- ``"auto"``: the kernel measured faster for the model's role on this kind of device
  (:func:`resolve`).

This module imports torch: the training code imports it where it is used.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ar2.encoders._runtime import cpu_has_amx
from ar2.encoders.dropout import PROJECTIONS
from ar2.errors import Ar2Error

KERNELS = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}

_HANDLES = "_ar2_attention_hooks"


def resolve(setting: str, device: str, role: str, amx: bool | None = None) -> str:
    """The kernel ``setting`` gives a model of ``role`` (``"retriever"``, ``"ranker"``) on
    ``device`` (``"cpu"``, ``"cuda:0"``); ``amx``: whether the CPU has AMX (read from it when
    ``None``).

    ``"auto"`` is the kernel measured faster (docs/benchmarks.md, issue 13): the unfused one
    for a retriever on a CPU with AMX (its G0 step 1.3-1.4x on an Intel Sapphire Rapids in
    bf16), torch's choice elsewhere: there the ranker's step (pairs of up to 192 tokens) ran
    no faster unfused, and on an AMD Zen 4 with AVX512-BF16 and no AMX the unfused kernel
    made the G0 step slower (0.94x).

    Example:
        >>> resolve("auto", "cpu", "retriever", amx=True)
        'math'
        >>> resolve("auto", "cpu", "ranker", amx=True)
        'torch'
        >>> resolve("auto", "cpu", "retriever", amx=False), resolve("flash", "cuda:0", "ranker")
        ('torch', 'flash')
    """
    if setting != "auto":
        return setting
    if torch.device(device).type != "cpu" or role != "retriever":
        return "torch"
    return "math" if (cpu_has_amx() if amx is None else amx) else "torch"


def train_with(model: Any, kernel: str) -> Any:
    """Run the attention layers of ``model`` with ``kernel`` (``"torch"``, ``"flash"``,
    ``"math"``) while they are in training mode, in place; a second call replaces the first.
    The hooks sit on each attention module (one holding query and key projections), so a
    container of towers works too. Returns ``model``.

    Raises:
        Ar2Error: a kernel was asked, but ``model`` has no attention layer ar2 recognises.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(hidden_size=8, num_hidden_layers=1,
        ...                             num_attention_heads=2, intermediate_size=8))
        >>> seen = []
        >>> layer = bert.encoder.layer[0].attention.self
        >>> _ = layer.register_forward_hook(lambda *a: seen.append(flash_enabled()))
        >>> x = torch.ones(1, 4, dtype=torch.long)
        >>> _ = train_with(bert, "math").train()(x)
        >>> _ = bert.eval()(x)
        >>> seen, flash_enabled()
        ([False, True], True)
    """
    layers = [m for m in model.modules() if _is_attention(m)]
    for layer in layers:
        for handle in getattr(layer, _HANDLES, ()):
            handle.remove()
        setattr(layer, _HANDLES, ())
    if kernel == "torch":
        return model
    if not layers:
        raise Ar2Error(
            f"train_attention = {kernel!r}, but {type(model).__name__} has no attention layer "
            "ar2 recognises. Fix: --set train_attention=torch for this model"
        )
    backend = KERNELS[kernel]
    for layer in layers:
        entered: list[Any] = []

        def enter(module: Any, args: Any, entered: list[Any] = entered) -> None:
            if module.training:
                context = sdpa_kernel([backend])
                context.__enter__()
                entered.append(context)

        def leave(module: Any, args: Any, output: Any, entered: list[Any] = entered) -> None:
            if entered:
                entered.pop().__exit__(None, None, None)

        handles = (layer.register_forward_pre_hook(enter, prepend=True),
                   layer.register_forward_hook(leave, always_call=True))  # fmt: skip
        setattr(layer, _HANDLES, handles)
    return model


def _is_attention(module: Any) -> bool:
    return any(hasattr(module, q) and hasattr(module, k) for q, k in PROJECTIONS)


def flash_enabled() -> bool:
    """Whether torch may pick the fused (flash) attention kernel here and now."""
    return bool(torch.backends.cuda.flash_sdp_enabled())
