"""The recipes of ``ar2 train --recipe NAME``: the seed's ways to train a dense retriever, each a
named set of settings over the same stages (``../shared/docs/seed_methods.md``).

A recipe is data, not code: the settings that make it (``defines``, checked before a run
starts, so a config that names a recipe but contradicts it is refused) and its default sizes
(``sizes``, which ``--set`` may change). ``ar2 train`` applies both over the preset, then the
``--set`` values. Every recipe runs the same G0 warm-up, round-0 mining, D0 ranker and test
report; they differ in what trains the retriever after G0. Two end in another artifact,
made from the finished run by the command of its name (``then``): ``repconc`` a compressed
index, ``sparse`` a sparse retriever.

Example:
    >>> sorted(RECIPES)
    ['adore', 'ar2', 'dexml', 'repconc', 'sparse', 'star', 'tas-b']
    >>> apply("star", {"rounds": 1})["refresh"]
    False
    >>> contradictions("star", {"refresh": True, "retriever_loss": "contrastive",
    ...                         "ranker": {"steps": 0}})
    ['refresh = true (the recipe sets false)']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """One recipe: its paper, what it does, and its settings (flat keys: ``"adore.steps"``)."""

    paper: str
    summary: str
    defines: Mapping[str, Any] = field(default_factory=dict)
    sizes: Mapping[str, Any] = field(default_factory=dict)
    then: str = ""
    """A command run over the finished run into ``OUT/<then>`` (:mod:`ar2.train.follow_up`):
    the recipes whose artifact is not the run's dense retriever."""


_STAR = {"retriever_loss": "contrastive", "refresh": False, "ranker.steps": 0}

RECIPES: dict[str, Recipe] = {
    "ar2": Recipe(
        "Zhang et al., Adversarial Retriever-Ranker for Dense Text Retrieval, ICLR 2022",
        "rounds of index refresh and mining, ranker steps, then retriever steps against the "
        "frozen ranker (adversarial + distillation terms)",
    ),
    "star": Recipe(
        "Zhan et al., Optimizing Dense Retrieval Model Training with Hard Negatives, SIGIR 2021",
        "static hard negatives mined once with the warm-up retriever G0, plus in-batch "
        "negatives; no refresh, and the ranker takes no part in training",
        defines=_STAR,
    ),
    "adore": Recipe(
        "Zhan et al., Optimizing Dense Retrieval Model Training with Hard Negatives, SIGIR 2021",
        "STAR, then the query tower alone trained against the fixed document index, its "
        "negatives retrieved at every step, with the ΔMRR-weighted pairwise loss (ADORE+STAR)",
        defines=_STAR,
        sizes={"adore.steps": 200},
    ),
    "dexml": Recipe(
        "Gupta et al., Dual-Encoders for Extreme Multi-label Classification, ICLR 2024",
        "the round's retriever learns from the labels alone with the decoupled softmax: each "
        "positive is contrasted with the mined and in-batch negatives, never with the query's "
        "other positives wherever they appear in the batch; negatives re-mined each round "
        "from the retriever's own index (DEXML's hard-negative shortlist)",
        defines={"retriever_loss": "decoupled", "ranker.steps": 0},
    ),
    "tas-b": Recipe(
        "Hofstätter et al., Efficiently Teaching an Effective Dense Retriever with Balanced "
        "Topic Aware Sampling, SIGIR 2021",
        "the round's retriever distils the ranker's margins (Margin-MSE) over negatives drawn "
        "balanced across bins of the teacher's margin, in batches drawn from one k-means topic "
        "of the training queries, plus the labels' in-batch cross-entropy",
        defines={
            "retriever_loss": "ar2",
            "adv_lambda": 0.0,
            "kd_loss": "margin_mse",
            "in_batch": True,
            "in_batch_masks_positives": True,
            "sampling.topic_batches": True,
            "sampling.balanced_margins": True,
            "ranker.steps": 0,
        },  # fmt: skip
    ),
    "repconc": Recipe(
        "Zhan et al., Learning Discrete Representations via Constrained Clustering for "
        "Effective and Efficient Dense Retrieval, WSDM 2022",
        "AR2's run, then its index compressed to 48 bytes a document: both towers and the PQ "
        "centroids trained under a balanced (Sinkhorn) clustering of the documents, then "
        "JPQ's stage over the new codes, beside JPQ alone (ar2 repconc, in OUT/repconc)",
        then="repconc",
    ),
    "sparse": Recipe(
        "Geng et al., Towards Competitive Search Relevance For Inference-Free Learned Sparse "
        "Retrievers, 2024",
        "AR2's run, then a document-side sparse encoder trained over its round-0 groups with "
        "IDF-weighted query bags and the FLOPS penalty, indexed in Seismic (ar2 sparse, in "
        "OUT/sparse)",
        then="sparse",
    ),
}


def apply(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """A config's TOML data with recipe ``name``'s settings over it, and ``recipe = name``.

    Example:
        >>> apply("adore", {"rounds": 1, "adore": {"lr": 1e-5}})["adore"]
        {'lr': 1e-05, 'steps': 200}
    """
    recipe = RECIPES[name]
    out = dict(data) | {"recipe": name}
    for key, value in {**recipe.defines, **recipe.sizes}.items():
        table, _, field = key.rpartition(".")
        if table:
            out[table] = {**out.get(table, {}), field: value}
        else:
            out[field] = value
    return out


def contradictions(name: str, config: Mapping[str, Any]) -> list[str]:
    """The settings of ``config`` (nested, as ``dataclasses.asdict`` gives) that contradict
    what recipe ``name`` defines, each as ``key = value (the recipe sets ...)``."""
    found = []
    for key, wanted in RECIPES[name].defines.items():
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value != wanted:
            found.append(f"{key} = {_toml(value)} (the recipe sets {_toml(wanted)})")
    return found


def _toml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)
