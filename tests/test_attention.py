"""Checks of ar2.encoders.attention: which kernel runs in training and in inference (read from
torch's profiler), the same function from both kernels, and the setting reaching training."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from ar2.encoders.attention import resolve, train_with  # noqa: E402
from ar2.errors import Ar2Error  # noqa: E402

FLASH, MATH = "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math"


def kernels(run: object) -> set[str]:
    """The attention kernels torch ran during ``run()``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()  # type: ignore[operator]
    return {k for k in (FLASH, MATH) if any(e.key == f"aten::{k}" for e in prof.key_averages())}


def embed(encoder: object, texts: list[str]) -> object:
    return encoder.embed_docs(texts)  # type: ignore[attr-defined]


def test_math_runs_in_training_only_and_both_towers_get_it(tiny_bert: Path) -> None:
    from ar2.encoders import BiEncoder
    from ar2.encoders.dropout import for_training

    encoder = BiEncoder.load(tiny_bert)
    encoder.untie()
    towers = for_training(torch.nn.ModuleList([encoder.query_model, encoder.doc_model]), 0.0)
    texts = ["cats eat fish", "dogs chase cats and birds"]
    towers.train()  # no attention dropout: torch's own choice is the fused kernel
    assert kernels(lambda: embed(encoder, texts)) == {FLASH}
    train_with(towers, "math")
    assert kernels(lambda: embed(encoder, texts)) == {MATH}
    assert kernels(lambda: encoder.embed_queries(texts)) == {MATH}
    towers.eval()
    assert kernels(lambda: embed(encoder, texts)) == {FLASH}  # inference keeps torch's choice
    towers.train()
    train_with(towers, "torch")  # a second call replaces the first
    assert kernels(lambda: embed(encoder, texts)) == {FLASH}


def test_both_kernels_compute_the_same_loss_and_gradients(tiny_bert: Path) -> None:
    from ar2.encoders import BiEncoder

    texts = ["cats eat fish", "dogs chase cats and birds", "a"]
    grads, ran = {}, {}
    for kernel in ("flash", "math"):
        encoder = BiEncoder.load(tiny_bert)
        model = train_with(encoder.doc_model, kernel).train()
        for module in model.modules():  # no dropout: the two passes see the same function
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        target = torch.linspace(-1, 1, encoder.dim)  # (dim,) a loss the norm does not fix
        ran[kernel] = kernels(lambda e=encoder, t=target: (embed(e, texts) @ t).sum().backward())
        grads[kernel] = torch.cat([p.grad.flatten() for p in model.parameters()
                                   if p.grad is not None])  # fmt: skip
    assert ran == {"flash": {FLASH}, "math": {MATH}}
    assert grads["flash"].abs().max() > 1e-4
    scale = float(grads["flash"].abs().max())
    torch.testing.assert_close(grads["flash"], grads["math"], rtol=1e-3, atol=1e-4 * scale)


def test_a_model_without_attention_is_a_clear_error() -> None:
    with pytest.raises(Ar2Error, match="train_attention=torch"):
        train_with(torch.nn.Linear(2, 2), "math")
    assert isinstance(train_with(torch.nn.Linear(2, 2), "torch"), torch.nn.Linear)


def test_auto_picks_by_role_device_and_cpu() -> None:
    assert resolve("auto", "cpu", "retriever", amx=True) == "math"
    assert resolve("auto", "cpu", "retriever", amx=False) == "torch"
    assert resolve("auto", "cpu", "ranker", amx=True) == "torch"
    assert resolve("auto", "cuda:0", "retriever", amx=True) == "torch"
    assert resolve("flash", "cuda:0", "retriever") == "flash"


def test_the_setting_reaches_training_and_is_checked(tiny_bert: Path) -> None:
    from ar2.config import AR2Config
    from ar2.encoders import BiEncoder
    from ar2.train.stage import for_training

    encoder = BiEncoder.load(tiny_bert)
    model = encoder.doc_model

    def settings(kernel: str) -> SimpleNamespace:
        return SimpleNamespace(train_attention=kernel, attention_dropout=0.0, fast_dropout=False)

    for_training(model, settings("torch"), "retriever").train()  # type: ignore[arg-type]
    assert kernels(lambda: embed(encoder, ["cats eat fish"])) == {FLASH}
    for_training(model, settings("math"), "retriever")  # type: ignore[arg-type]
    assert kernels(lambda: embed(encoder, ["cats eat fish"])) == {MATH}
    for_training(model, settings("auto"), "ranker")  # type: ignore[arg-type]
    assert kernels(lambda: embed(encoder, ["cats eat fish"])) == {FLASH}  # "auto" for a ranker
    with pytest.raises(ValueError, match="train_attention"):
        AR2Config(train_attention="fast")
