"""ONNX Runtime inference for the query tower and the ranker: export once, check, run.

A graph holds the whole computation from token ids to the answer: the query tower with its
pooling and normalisation (what :meth:`BiEncoder.encode_queries` returns), or the ranker with
its head (what :meth:`CrossEncoder.score_pairs` returns). Token ids still come from the Hugging
Face tokenizer, so only the forward pass changes.

- **Export** uses torch's TorchScript exporter (``dynamo=False``, opset 17). torch 2.13 calls
  it deprecated, but its ``torch.export``-based exporter took 50 s for a 2-layer, 32-dim test
  BERT where this one took 1.3 s (and 86 s against 13 s for MiniLM). A torch without it
  makes the export fail with an error that says to use the torch backend.
- **Check.** Before a graph is used, ONNX Runtime and torch (fp32, eval mode, on a CPU copy of
  the model) encode the same probe batch: every query vector must reach cosine >= 0.9999 with
  torch's and a relative length error <= 1e-3, every ranker logit agree within 1e-3 (scaled by
  the logits' range). An fp32 graph that fails is never cached or used. ``int8`` (ONNX
  Runtime's dynamic quantization of the weights) is lossy by design: its agreement is measured
  and recorded, and a warning is logged when it misses the fp32 thresholds.
- **Cache.** Graphs live under ``$AR2_CACHE/onnx`` (default ``~/.cache/ar2/onnx``), one folder
  per hash of the weights and of the settings the graph bakes in, with a ``manifest.json``.
  ar2 never writes into a model folder, which may not be its own.

Example:
    >>> BACKENDS
    ('auto', 'torch', 'onnx', 'onnx-int8')
    >>> resolve_backend("auto") in ("onnx", "torch")
    True
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ar2 import __version__
from ar2._io import atomic_write_json, make_temp_dir, remove_path
from ar2._optional import require
from ar2.config import BACKENDS
from ar2.encoders._runtime import eval_mode, pad_arrays
from ar2.errors import Ar2Error

log = logging.getLogger("ar2")

OPSET = 17
MIN_COSINE = 0.9999
"""The least cosine between an fp32 graph's query vector and torch's."""
MAX_RELATIVE_ERROR = 1e-3
"""The largest ``||graph - torch|| / ||torch||`` of an fp32 graph's query vector."""
MAX_LOGIT_ERROR = 1e-3
"""The largest difference between an fp32 graph's ranker logit and torch's, per unit of the
probe logits' range (at least 1)."""

PROBE_TEXTS = (
    "what do cats eat",
    "x",
    "the effect of vitamin d supplements on bone density in women over sixty",
    "Does p53 regulate apoptosis after DNA damage? A review of the evidence from mouse models.",
)
"""Texts of several lengths for the check (a padded batch, so masks are exercised)."""


def resolve_backend(backend: str, device: str = "cpu") -> str:
    """``auto`` made concrete (``onnx`` when ONNX Runtime is installed and the models run on
    the CPU, else ``torch``); an ONNX backend without the ``onnx`` extra is an
    :class:`Ar2Error` that names it.

    Example:
        >>> resolve_backend("torch"), resolve_backend("auto", device="cuda")
        ('torch', 'torch')
    """
    if backend not in BACKENDS:
        raise Ar2Error(f"backend {backend!r} is unknown. Fix: choose one of {', '.join(BACKENDS)}")
    found = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))
    if backend == "auto":
        return "onnx" if found and device == "cpu" else "torch"
    if backend != "torch" and not found:
        raise Ar2Error(
            f"backend {backend!r} needs onnxruntime and onnx, which are not installed. "
            "Fix: pip install 'ar2[onnx]', or use the torch backend"
        )
    return backend


def attach(
    make_spec: Callable[[], GraphSpec], backend: str, device: str, auto: bool = True
) -> OnnxGraph | None:
    """The graph ``backend`` asks for (``None``: torch). ``auto`` is ONNX Runtime only for a
    model that ``auto`` says it is faster for (``docs/benchmarks.md``: one query's encoding
    5.9x faster; the ranker's 20 pairs 0.89x, so the ranker stays on torch under ``auto``).
    Under ``auto`` a graph that cannot be exported, or disagrees with torch, leaves the model
    on torch with a warning; asked for by name, it is an :class:`Ar2Error`."""
    if backend == "auto" and not auto:
        return None
    concrete = resolve_backend(backend, device)
    if concrete == "torch":
        return None
    try:
        return graph_for(make_spec(), concrete)
    except Ar2Error as err:
        if backend != "auto":
            raise
        log.warning("%s; the model stays on torch", err)
        return None


def cache_dir() -> Path:
    """Where exported graphs are kept: ``$AR2_CACHE/onnx``, default ``~/.cache/ar2/onnx``."""
    root = os.environ.get("AR2_CACHE") or Path.home() / ".cache" / "ar2"
    return Path(root) / "onnx"


class OnnxGraph:
    """An ONNX Runtime session on CPU over one exported graph, fed numpy arrays; ``record``
    is what its cache folder's ``manifest.json`` says of it.

    Only the inputs the graph declares are fed (the exporter drops inputs a head ignores,
    such as the boundary for a classifier head).
    """

    def __init__(self, path: Path, record: dict[str, Any] | None = None) -> None:
        ort = require("onnxruntime", "onnx")
        self.path, self.record = path, record or {}
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = tuple(i.name for i in self.session.get_inputs())

    @classmethod
    def cached(cls, folder: Path) -> OnnxGraph:
        """The graph of a cache folder (``model.onnx`` and ``manifest.json``)."""
        return cls(folder / "model.onnx", json.loads((folder / "manifest.json").read_text()))

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's one output for ``feeds`` (extra feeds are left out)."""
        out = self.session.run(None, {k: v for k, v in feeds.items() if k in self.inputs})
        return np.asarray(out[0], dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """What a manifest records: the backend, the graph's file and its check against torch."""
        keys = ("backend", "role", "opset", "check", "onnxruntime", "torch")
        return {k: self.record.get(k) for k in keys} | {"path": str(self.path)}


@dataclass(frozen=True)
class GraphSpec:
    """What to export: a torch module from named int64 inputs to one float output, a probe
    batch, and how the check compares the graph's output with torch's."""

    role: str  # "query" or "ranker"
    module: Any  # torch.nn.Module around the model in use (never changed: exports copy it)
    example: dict[str, np.ndarray]  # the export's inputs: name -> (batch, seq) or (batch,)
    probe: dict[str, np.ndarray]  # the check's: another batch size and width than example
    output: str  # the output's name
    settings: dict[str, Any]  # what the graph bakes in (pooling, head, scale, ...)
    agreement: Callable[[np.ndarray, np.ndarray], dict[str, float]]
    passes: Callable[[dict[str, float]], bool]


def graph_for(spec: GraphSpec, backend: str) -> OnnxGraph:
    """The cached graph of ``spec`` for ``backend`` (``onnx`` or ``onnx-int8``), exported and
    checked first if there is none. Raises :class:`Ar2Error` if the export fails or an fp32
    graph disagrees with torch; nothing is cached then."""
    folder = cache_dir() / _key(spec, backend)
    if not (folder / "manifest.json").is_file():
        log.info("exporting the %s model to ONNX (once; cached in %s)", spec.role, folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(folder)
        try:
            _build(spec, backend, tmp)
            try:
                os.replace(tmp, folder)
            except OSError:  # another process cached the same graph meanwhile: use theirs
                if not (folder / "manifest.json").is_file():
                    raise
        finally:
            remove_path(tmp)
    return OnnxGraph.cached(folder)


def _build(spec: GraphSpec, backend: str, tmp: Path) -> None:
    """Export, quantize, check and record the graph in folder ``tmp``."""
    began = time.perf_counter()
    module = copy.deepcopy(spec.module).cpu().float()  # the model in use stays as it is
    try:
        _export(module, spec, tmp / "model.onnx")
        if backend == "onnx-int8":
            _quantize(tmp / "model.onnx")
        reference = _reference(module, spec.probe)
        check = spec.agreement(reference, OnnxGraph(tmp / "model.onnx").run(spec.probe))
    except Exception as err:  # the exporter's and ONNX Runtime's many failures
        raise Ar2Error(
            f"the ONNX export of the {spec.role} model failed ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}). "
            "Fix: use --backend torch, and report the model and versions"
        ) from err
    if not spec.passes(check):
        if backend == "onnx":
            raise Ar2Error(
                f"the ONNX export of the {spec.role} model disagrees with torch ({check}). "
                "Fix: use --backend torch, and report the model and versions"
            )
        log.warning("the int8 %s model departs from torch's: %s", spec.role, check)
    atomic_write_json(tmp / "manifest.json", _record(spec, backend, check, began))


def vector_agreement(reference: np.ndarray, graph: np.ndarray) -> dict[str, float]:
    """The least cosine between each graph vector and torch's, and the largest error in
    length relative to torch's vector (a dot-product model's scores depend on both).

    Example:
        >>> vector_agreement(np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]]))
        {'min_cosine': 0.707107, 'max_relative_error': 1.0}
    """
    num = (reference * graph).sum(-1)
    norms = np.linalg.norm(reference, axis=-1)
    den = norms * np.linalg.norm(graph, axis=-1)
    error = np.linalg.norm(reference - graph, axis=-1) / np.maximum(norms, 1e-12)
    return {"min_cosine": round(float((num / np.maximum(den, 1e-12)).min()), 6),
            "max_relative_error": round(float(error.max()), 6)}  # fmt: skip


def logit_agreement(reference: np.ndarray, graph: np.ndarray) -> dict[str, float]:
    """The largest difference between the graph's logits and torch's, per unit of their range
    (at least 1).

    Example:
        >>> logit_agreement(np.array([0.0, 4.0]), np.array([0.0, 4.002]))
        {'max_error': 0.0005}
    """
    spread = max(1.0, float(np.ptp(reference)))
    return {"max_error": round(float(np.abs(reference - graph).max()) / spread, 6)}


def _key(spec: GraphSpec, backend: str) -> str:
    """A hash of the weights (every tensor of the state dict), the settings and the versions."""
    digest = hashlib.sha256()
    torch = require("torch")
    for name, tensor in sorted(spec.module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    config = getattr(getattr(spec.module, "model", None), "config", None)
    header = {"role": spec.role, "backend": backend, "settings": spec.settings, "opset": OPSET,
              "torch": torch.__version__, "onnxruntime": require("onnxruntime").__version__,
              "ar2": __version__, "model": config.to_dict() if config else None}  # fmt: skip
    digest.update(json.dumps(header, sort_keys=True).encode())
    return f"{spec.role}-{digest.hexdigest()[:24]}"


def _export(module: Any, spec: GraphSpec, path: Path) -> None:
    """``module`` (a CPU copy of ``spec.module``) to ONNX at ``path``, with dynamic batch and
    sequence axes."""
    torch = require("torch")
    names = tuple(spec.example)
    args = tuple(torch.from_numpy(spec.example[n]) for n in names)
    axes = {n: ({0: "batch"} if n == "boundary" else {0: "batch", 1: "seq"}) for n in names}
    options: dict[str, Any] = {"input_names": list(names), "output_names": [spec.output],
                               "dynamic_axes": axes | {spec.output: {0: "batch"}},
                               "opset_version": OPSET}  # fmt: skip
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:  # keep TorchScript's
        options["dynamo"] = False
    with eval_mode(module), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        torch.onnx.export(module, args, str(path), **options)


def _quantize(path: Path) -> None:
    """Dynamic int8 quantization of the weights (ONNX Runtime's), in place."""
    quantization = require("onnxruntime.quantization", "onnx")
    out = path.with_name("int8.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it advises pre-processing on the root logger, every time
    try:
        quantization.quantize_dynamic(str(path), str(out), weight_type=quantization.QuantType.QInt8)
    finally:
        root.setLevel(level)
    out.replace(path)


def _reference(module: Any, probe: dict[str, np.ndarray]) -> np.ndarray:
    torch = require("torch")
    with eval_mode(module), torch.inference_mode():
        out = module(*(torch.from_numpy(v) for v in probe.values()))
    return out.float().cpu().numpy()  # type: ignore[no-any-return]


def _record(spec: GraphSpec, backend: str, check: dict[str, float], began: float) -> dict:
    versions = {name: require(name, "onnx").__version__ for name in ("onnxruntime", "torch")}
    return {
        "kind": "onnx_graph",
        "ar2_version": __version__,
        "role": spec.role,
        "backend": backend,
        "opset": OPSET,
        "settings": spec.settings,
        "check": check | {"probe": list(PROBE_TEXTS)},
        "export_seconds": round(time.perf_counter() - began, 2),
        **versions,
    }


def _vectors_pass(check: dict[str, float]) -> bool:
    return check["min_cosine"] >= MIN_COSINE and check["max_relative_error"] <= MAX_RELATIVE_ERROR


def query_spec(encoder: Any) -> GraphSpec:
    """The query tower of a :class:`~ar2.encoders.BiEncoder` with its pooling and
    normalisation: ``(input_ids, attention_mask)`` to ``(batch, dim)`` vectors."""
    torch = require("torch")
    from ar2.encoders.pooling import get_pooler

    pool, normalize = get_pooler(encoder.config.pooling), encoder.config.normalize

    class QueryGraph(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)
            vectors = pool(hidden.last_hidden_state, attention_mask)  # (batch, dim)
            return torch.nn.functional.normalize(vectors, dim=-1) if normalize else vectors

    def batch(texts: tuple[str, ...]) -> dict[str, np.ndarray]:
        ids = encoder.tokenizer(
            [encoder.query_text(t) for t in texts], truncation=True,
            max_length=encoder.config.query_max_length,
        )["input_ids"]  # fmt: skip
        return pad_arrays(ids, encoder.tokenizer.pad_token_id)

    settings = {"pooling": encoder.config.pooling, "normalize": normalize}
    return GraphSpec("query", QueryGraph(encoder.query_model), batch(PROBE_TEXTS[:2]),
                     batch(PROBE_TEXTS), "vector", settings, vector_agreement,
                     _vectors_pass)  # fmt: skip


def ranker_spec(ranker: Any) -> GraphSpec:
    """A :class:`~ar2.encoders.CrossEncoder` with its head: ``(input_ids, attention_mask,
    token_type_ids, boundary)`` to ``(batch,)`` logits."""
    torch = require("torch")
    from ar2.encoders.cross_encoder import HEADS

    head, scale = HEADS[ranker.config.head][1], ranker.config.scale

    class RankerGraph(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, model: Any, names: tuple[str, ...]) -> None:
            super().__init__()
            self.model, self.names = model, names

        def forward(self, *inputs: Any) -> Any:
            batch = dict(zip(self.names, inputs))
            boundary = batch.pop("boundary")  # (batch,)
            return head(self.model, batch, boundary, scale)  # (batch,)

    pairs = [(q, d) for q in PROBE_TEXTS for d in PROBE_TEXTS[1:]]
    example = ranker.pair_arrays(pairs[:2])
    settings = {"head": ranker.config.head, "scale": scale}
    module = RankerGraph(ranker.model, tuple(example))  # copied to the CPU only to export
    return GraphSpec("ranker", module, example, ranker.pair_arrays(pairs),
                     "logit", settings, logit_agreement,
                     lambda c: c["max_error"] <= MAX_LOGIT_ERROR)  # fmt: skip
