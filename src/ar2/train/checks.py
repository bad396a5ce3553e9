"""What a training run checks before its first expensive step: settings that would otherwise
fail minutes or hours in (token cut-offs longer than a model takes, the dev measure, an index
that FAISS cannot build or train on the corpus).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ar2.config import AR2Config
from ar2.encoders import _hf
from ar2.errors import Ar2Error


def check_settings(cfg: AR2Config) -> None:
    """Raise :class:`Ar2Error` if a model cannot take the run's cut-offs or the dev measure is
    unknown; reads only the models' ``config.json`` (no weights)."""
    from ar2.encoders.bi_encoder import default_model_path
    from ar2.evaluate import parse_measures

    retriever = _hf.check_model_dir(cfg.retriever_model or default_model_path())
    _fits(retriever, "retriever_model", query_max_length=cfg.query_max_length,
          doc_max_length=cfg.doc_max_length)  # fmt: skip
    if cfg.ranker_from_g0:
        ranker = retriever
    else:
        ranker = _hf.check_model_dir(cfg.ranker_model or default_model_path())
    if cfg.ranker_max_length is not None:  # unset: query + doc, lowered to what the model takes
        _fits(ranker, "ranker_model", ranker_max_length=cfg.ranker_max_length)
    if cfg.train_doc_max_length is not None:  # the ranker's training pairs: query + document
        _fits(ranker, "ranker_model", train_doc_max_length=cfg.train_doc_max_length,
              extra=cfg.query_max_length)  # fmt: skip
    _check_recipe(cfg)
    try:
        parse_measures([cfg.eval_measure])
    except ValueError as err:
        raise Ar2Error(
            f"eval_measure: {err}. Fix: use an ir_measures name such as nDCG@10"
        ) from None


def _check_recipe(cfg: AR2Config) -> None:
    """Raise if ``cfg`` contradicts a setting its recipe is made of (:mod:`ar2.train.recipes`)."""
    from ar2.train.recipes import contradictions

    found = contradictions(cfg.recipe, dataclasses.asdict(cfg))
    if found:
        raise Ar2Error(
            f"recipe = {cfg.recipe!r}, but {'; '.join(found)}. Fix: leave these settings to "
            f"the recipe (ar2 train --recipe {cfg.recipe} sets them), or name the recipe they "
            "make"
        )


def _fits(model: Path, role: str, extra: int = 0, **lengths: int) -> None:
    """Raise unless every token cut-off ``lengths`` (plus ``extra`` tokens that come with it:
    the query of a ranker's pair) fits what ``model`` takes."""
    limit = _hf.max_positions(model)
    for name, value in lengths.items():
        if limit is not None and value + extra > limit:
            plus = f" (+ {extra} for the query)" if extra else ""
            raise Ar2Error(
                f"{role} {model} takes at most {limit} tokens, but {name} = {value}{plus}. "
                f"Fix: --set {name}={limit - extra} or less (or in the config)"
            )


def ranker_length(cfg: AR2Config, start: str | Path | None) -> int:
    """The ranker's pair cut-off: ``ranker_max_length``, else query + document cut-offs
    lowered to what the model ``start`` takes."""
    from ar2.encoders.bi_encoder import default_model_path

    if cfg.ranker_max_length is not None:
        return cfg.ranker_max_length
    pair = cfg.query_max_length + cfg.doc_max_length
    return min(pair, _hf.max_positions(start or default_model_path()) or pair)


def check_index(cfg: AR2Config, data_dir: Path) -> None:
    """Raise :class:`Ar2Error` if the ``[index]`` settings cannot index the corpus of
    ``data_dir`` (its non-blank lines) with the retriever's vectors
    (:func:`ar2.index.factory.check_factory`)."""
    from ar2.encoders.bi_encoder import default_model_path
    from ar2.index.factory import check_factory

    model = Path(cfg.retriever_model or default_model_path())
    dim = _hf.read_json(model / "config.json").get("hidden_size")
    corpus = data_dir / "corpus.jsonl"
    if isinstance(dim, int) and corpus.is_file():
        from ar2.data.beir import count_documents

        check_factory(cfg.index, count_documents(corpus), dim)
