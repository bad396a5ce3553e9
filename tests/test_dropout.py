"""Checks of ar2.encoders.dropout: the masks against a hand computation, the settings on a BERT,
and a run trained with them resuming to the same models."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ar2.encoders.dropout import FastDropout, for_training, rates  # noqa: E402


def test_the_mask_is_the_16_bit_draw_compared_with_the_threshold() -> None:
    x = torch.randn(3, 5, 7)
    torch.manual_seed(11)
    got = FastDropout(0.1).train()(x)
    torch.manual_seed(11)  # the same draw by hand: 4 int16 lanes per int64, in memory order
    words = torch.randint(-(2**63), 2**63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64)
    lanes = words.view(torch.int16)[: x.numel()].view(x.shape).long()
    dropped = round(0.1 * 65536)  # 6554 of 65536 values
    keep = lanes + 32768 >= dropped
    torch.testing.assert_close(got, torch.where(keep, x * 65536 / (65536 - dropped), 0.0))


def test_the_rate_and_the_mean_are_kept() -> None:
    torch.manual_seed(0)
    n, p = 1_000_000, 0.1
    y = FastDropout(p).train()(torch.ones(n))
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(float((y == 0).double().mean()) - p) < 5 * sigma
    assert abs(float(y.double().mean()) - 1.0) < 5 * sigma / (1 - p)


def test_eval_mode_and_rate_zero_pass_the_input_through() -> None:
    x = torch.randn(10)
    assert FastDropout(0.3).eval()(x) is x and FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match=r"Fix: use a rate in \[0, 0.99998"):
        FastDropout(1.0)


def test_settings_reach_the_right_layers_and_leave_the_files_alone(
    tiny_bert: Path, tmp_path: Path
) -> None:
    from ar2.encoders import BiEncoder

    encoder = BiEncoder.load(tiny_bert)
    model = encoder.doc_model
    keys = set(model.state_dict())
    assert rates(model) == {"attention": 0.1, "other": 0.1}
    for_training(model, attention=0.0, fast=True)
    assert rates(model) == {"attention": 0.0, "other": 0.1}
    attention = [m.dropout for n, m in model.named_modules() if n.endswith("attention.self")]
    assert len(attention) == 2 and all(type(d) is torch.nn.Dropout for d in attention)
    others = [m for m in model.modules() if isinstance(m, FastDropout)]
    assert len(others) == 1 + 2 * 2  # embeddings, and two per layer
    assert set(model.state_dict()) == keys
    encoder.save(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["attention_probs_dropout_prob"] == saved["hidden_dropout_prob"] == 0.1


def test_attention_dropout_zero_is_the_models_eval_attention(tiny_bert: Path) -> None:
    from ar2.encoders import BiEncoder

    encoder = BiEncoder.load(tiny_bert)
    model, texts = encoder.doc_model, ["cats eat fish", "dogs chase cats"]
    for name, module in model.named_modules():  # hidden dropout off: attention dropout is left
        if isinstance(module, torch.nn.Dropout) and not name.endswith("attention.self.dropout"):
            module.p = 0.0

    def train_vs_eval() -> bool:
        model.train()
        trained = encoder.embed_docs(texts)
        model.eval()
        return bool(torch.allclose(trained, encoder.embed_docs(texts)))

    torch.manual_seed(0)
    assert not train_vs_eval()  # the model's own attention dropout (0.1) changes the output
    for_training(model, attention=0.0)
    assert train_vs_eval()


def test_a_model_without_attention_dropout_is_a_clear_error() -> None:
    from ar2.errors import Ar2Error

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
    with pytest.raises(Ar2Error, match="attention_dropout=none"):
        for_training(model, attention=0.0)
    assert isinstance(for_training(model, fast=True)[1], FastDropout)


def test_bf16_inputs_are_rounded_once() -> None:
    x = torch.full((4096,), 1.0, dtype=torch.bfloat16)
    y = FastDropout(0.1).train()(x)
    kept = y[y != 0].float()
    assert kept.unique().tolist() == [torch.tensor(65536 / (65536 - 6554)).bfloat16().item()]


@pytest.mark.integration
def test_a_run_with_fast_dropout_resumes_to_the_same_models(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    from conftest import build_tiny_bert, write_train_toy
    from test_train import _kill_when, _train_cmd

    data, model = write_train_toy(tmp_path / "data"), build_tiny_bert(tmp_path / "tiny")
    sets = ["--set", "fast_dropout=true", "--set", "attention_dropout=0"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(_train_cmd(data, model, straight, *sets), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _kill_when(_train_cmd(data, model, killed, *sets), killed / "checkpoints" / "g0")
    resumed = subprocess.run(
        _train_cmd(data, model, killed, "--resume", *sets), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    for name in ("retriever/model.safetensors", "ranker/model.safetensors"):
        want, got = load_file(str(straight / name)), load_file(str(killed / name))
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-5), f"{name}:{key}"
    # and the settings did reach training: the model's own dropout trains another model
    plain = tmp_path / "plain"
    assert subprocess.run(_train_cmd(data, model, plain), capture_output=True).returncode == 0
    name = "retriever/model.safetensors"
    want, other = load_file(str(straight / name)), load_file(str(plain / name))
    assert any(abs(want[k] - other[k]).max() > 1e-4 for k in want)
