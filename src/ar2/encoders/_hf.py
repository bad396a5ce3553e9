"""Loading and saving Hugging Face / sentence-transformers model folders, offline only."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from ar2._io import atomic_write_json
from ar2._optional import require
from ar2.config import EncoderConfig
from ar2.errors import Ar2Error

MANIFEST = "manifest.json"
_OFFSET_POSITIONS = frozenset(
    {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer",
     "data2vec-text", "luke"}
)  # fmt: skip
"""Model types whose first two positions are reserved (514 positions take 512 tokens)."""
T = TypeVar("T")


def check_model_dir(path: str | Path) -> Path:
    """Return ``path`` as a Path if it is a local model folder, else raise a clear error."""
    path = Path(path)
    if not (path / "config.json").is_file() and (path / "retriever" / "config.json").is_file():
        raise Ar2Error(
            f"{path}: a run folder, not a model folder. Fix: pass {path / 'retriever'} (or "
            f"{path / 'ranker'} for the ranker)"
        )
    if not (path / "config.json").is_file():
        raise Ar2Error(
            f"{path}: not a model folder (no config.json). Fix: pass a local Hugging Face or "
            "sentence-transformers folder; models are never downloaded (no model hub here)"
        )
    return path


def max_positions(path: str | Path) -> int | None:
    """The longest input (in tokens) the model in ``path`` takes: its position embeddings,
    and its tokenizer's ``model_max_length`` when that is smaller; ``None`` if unknown.

    Example:
        >>> import pathlib, tempfile, json
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "config.json").write_text(json.dumps({"max_position_embeddings": 128}))
        >>> max_positions(d)
        128
    """
    path = Path(path)
    config = read_json(path / "config.json")
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and config.get("model_type") in _OFFSET_POSITIONS:
        positions -= 2  # RoBERTa-style position ids start after the padding index
    limits = [positions, read_json(path / "tokenizer_config.json").get("model_max_length")]
    found = [int(x) for x in limits if isinstance(x, (int, float)) and 0 < x < 1e6]
    return min(found) if found else None


def fit_lengths(path: Path, config: T, fields: tuple[str, ...], asked: dict[str, Any]) -> T:
    """``config`` with its token cut-offs ``fields`` within the model's :func:`max_positions`:
    a default that is too long is lowered; one the caller ``asked`` for is an error."""
    limit = max_positions(path)
    too_long = {f: getattr(config, f) for f in fields if limit and getattr(config, f) > limit}
    for field, value in too_long.items():
        if field in asked:
            raise Ar2Error(
                f"{path}: the model takes at most {limit} tokens, but {field} = {value}. "
                f"Fix: set {field} to {limit} or less"
            )
    return dataclasses.replace(config, **dict.fromkeys(too_long, limit))  # type: ignore[type-var]


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON file, or ``{}`` when it does not exist; a damaged one is an Ar2Error."""
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError
        raise Ar2Error(
            f"{path}: not valid JSON ({err}). Fix: restore the model folder from a copy, or "
            "save or train the model again"
        ) from None
    return data if isinstance(data, dict) else {"modules": data}


def load_tokenizer_and_model(path: Path, task: str = "base", **kwargs: Any) -> tuple[Any, Any]:
    """Load a tokenizer and a model (``base`` or ``sequence-classification``) from ``path``."""
    transformers = require("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    auto = (
        transformers.AutoModel
        if task == "base"
        else transformers.AutoModelForSequenceClassification
    )
    model = auto.from_pretrained(str(path), local_files_only=True, **kwargs)
    return tokenizer, model.eval()


def config_from_st_folder(path: Path) -> dict[str, Any]:
    """Read pooling, normalisation, max length and prompts of a sentence-transformers folder."""
    modules = read_json(path / "modules.json").get("modules", [])
    found: dict[str, Any] = {}
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            found["pooling"] = _pooling_name(read_json(path / module["path"] / "config.json"), path)
        if kind.endswith("Normalize"):
            found["normalize"] = True
    if modules:
        found.setdefault("normalize", False)
    max_len = read_json(path / "sentence_bert_config.json").get("max_seq_length")
    if max_len:
        found["doc_max_length"] = int(max_len)
    prompts = read_json(path / "config_sentence_transformers.json").get("prompts") or {}
    if prompts.get("query"):
        found["query_prefix"] = prompts["query"]
    if prompts.get("document"):
        found["doc_prefix"] = prompts["document"]
    return found


def _pooling_name(pool_cfg: dict[str, Any], path: Path) -> str:
    if pool_cfg.get("pooling_mode_cls_token"):
        return "cls"
    if pool_cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    raise Ar2Error(
        f"{path}: pooling {pool_cfg} is not supported. Fix: use a model with mean or CLS pooling"
    )


def save_st_tower(model: Any, tokenizer: Any, cfg: EncoderConfig, path: Path, max_len: int) -> None:
    """Save one tower as a folder that ``SentenceTransformer(path)`` loads as it is."""
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if cfg.normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
        (path / "2_Normalize").mkdir(exist_ok=True)
    atomic_write_json(path / "modules.json", modules)
    atomic_write_json(
        path / "sentence_bert_config.json", {"max_seq_length": max_len, "do_lower_case": False}
    )
    atomic_write_json(path / "1_Pooling" / "config.json", _pooling_config(model, cfg.pooling))
    prompts = {"query": cfg.query_prefix, "document": cfg.doc_prefix}
    atomic_write_json(
        path / "config_sentence_transformers.json",
        {
            "prompts": prompts,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine" if cfg.normalize else "dot",
        },
    )


def _pooling_config(model: Any, pooling: str) -> dict[str, Any]:
    return {
        "word_embedding_dimension": int(model.config.hidden_size),
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
