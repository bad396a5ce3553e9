"""Typed, frozen configuration: one dataclass per concern, loadable from TOML.

Components receive the dataclass they need, never a bag of everything.

Example:
    >>> cfg = EncoderConfig(pooling="cls", normalize=False)
    >>> cfg.doc_max_length
    256
    >>> IndexConfig().preset
    'flat'
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ar2._typed import check_choice, check_ranges, from_dict, kind_of
from ar2.errors import Ar2Error

T = TypeVar("T")

# The names of each family of variants, kept here (a module light enough for the CLI to read)
# and nowhere else: the registries of their implementations are keyed by them, which
# tests/test_names.py checks (encoders.pooling.POOLERS, losses.ADV_REDUCTIONS,
# index.factory.PRESETS, index.KINDS).
PRECISIONS = ("auto", "bf16", "fp32")
BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
"""Where inference runs (:mod:`ar2.encoders.onnx_runtime`): ``torch``; ``onnx`` (ONNX Runtime,
fp32); ``onnx-int8`` (weights quantized to int8); ``auto``: ``onnx`` when ``onnxruntime`` is
installed, else ``torch``."""
POOLINGS = ("mean", "cls")
RETRIEVER_LOSSES = ("ar2", "contrastive", "decoupled")
ADV_REDUCTIONS = ("sum", "mean_per_query")
INDEX_KINDS = ("bm25", "dense", "sparse")
STORES = ("faiss", "milvus")
"""Where a dense index keeps its vectors: a FAISS index in its folder, or a Milvus collection
the folder names (:mod:`ar2.index.milvus`, the ``milvus`` extra)."""
SPARSE_STARTS = ("g0", "model")
KD_LOSSES = ("ce", "margin_mse", "nway_kl")
TEACHERS = ("ranker", "ensemble")
TEACHER_NORMS = ("minmax", "zscore")
TEACHER_PARTS = ("ranker", "retriever", "bm25")
DELIVERIES = ("best", "last")
RANKER_HEADS = ("classifier", "cosine")
TRAIN_ATTENTION = ("auto", "torch", "flash", "math")
RECIPES = ("ar2", "star", "adore", "dexml", "tas-b", "repconc", "sparse")
"""The recipes of ``ar2 train --recipe`` (:data:`ar2.train.recipes.RECIPES`)."""
"""Attention kernels for training passes (:mod:`ar2.encoders.attention`)."""


@dataclass(frozen=True)
class EncoderConfig:
    """How a bi-encoder turns text into vectors.

    Attributes:
        pooling: ``"mean"`` (masked mean of the last layer) or ``"cls"`` (first token).
        normalize: L2-normalise vectors (cosine similarity); otherwise raw dot product.
        query_max_length: Token cut-off for queries.
        doc_max_length: Token cut-off for documents (``title + title_sep + text``).
        query_prefix: Text prepended to every query (e.g. ``"query: "``).
        doc_prefix: Text prepended to every document.
        title_sep: Separator between a document's title and its text.
        precision: ``"auto"`` (bf16 autocast where the hardware has it), ``"bf16"``, ``"fp32"``.
        batch_size: Sequences per forward pass, formed from length-sorted inputs (16 is fastest
            on a 2-core CPU; raise it on a GPU).
    """

    pooling: str = "mean"
    normalize: bool = True
    query_max_length: int = 64
    doc_max_length: int = 256
    query_prefix: str = ""
    doc_prefix: str = ""
    title_sep: str = " "
    precision: str = "auto"
    batch_size: int = 16

    def __post_init__(self) -> None:
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class RankerConfig:
    """How a cross-encoder scores ``[CLS] query [SEP] title text [SEP]`` pairs.

    Attributes:
        fusion_weight: Weight ``w`` of the ranker when reranking: hits are ordered by
            ``(1 - w) z(retrieval score) + w z(ranker score)`` (per-query z-scores, see
            :mod:`ar2.fusion`). ``1.0`` orders by the ranker alone; ``ar2 train`` tunes it on dev
            and saves it with the ranker.
        head: How the joint pass becomes a score (:data:`RANKER_HEADS`): ``"classifier"``, a
            linear layer on ``[CLS]`` (a sentence-transformers ``CrossEncoder``); ``"cosine"``,
            ``scale`` x the cosine of the mean-pooled query and document segments (our addition:
            a bi-encoder's weights score well from the first step, docs/ar2.md).
        scale: The ``"cosine"`` head's similarity scale (1 / temperature).
    """

    max_length: int = 256
    title_sep: str = " "
    precision: str = "auto"
    batch_size: int = 32
    fusion_weight: float = 1.0
    head: str = "classifier"
    scale: float = 20.0

    def __post_init__(self) -> None:
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("head", self.head, RANKER_HEADS)
        check_ranges(self, at_least={}, above={"scale": 0.0})
        if not 0.0 <= self.fusion_weight <= 1.0:
            raise Ar2Error(f"fusion_weight = {self.fusion_weight}. Fix: use a value in [0, 1]")


INDEX_PRESETS = ("flat", "ivf", "hnsw", "ivfpq", "auto")
"""The names :class:`IndexConfig` accepts (``ar2.index.factory.PRESETS`` plus ``auto``)."""
INDEX_QUANTIZERS = ("int8", "binary")
"""The codes :class:`IndexConfig` ``quantize`` accepts (``ar2.index.factory.QUANTIZERS``)."""
QUANTIZABLE = {"int8": ("flat", "ivf", "hnsw"), "binary": ("flat",)}
"""The presets each quantizer applies to (IVF-PQ is compressed already)."""


@dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index to build: a preset name or a raw factory string, and search settings.

    Attributes:
        preset: ``flat``, ``ivf``, ``hnsw`` or ``ivfpq``, or ``auto`` (chosen from the corpus
            size and ``ram_budget_gb``: :func:`ar2.index.factory.auto_preset`); ignored when
            ``factory`` is set.
        factory: A FAISS ``index_factory`` string (e.g. ``"IVF256,Flat"``), overriding ``preset``.
        nprobe: IVF lists visited per query.
        ef_search: HNSW beam width at query time.
        ram_budget_gb: the memory the index may take, for ``auto`` (default: half the
            machine's RAM).
        ef_construction: HNSW beam width while building. FAISS's default, 40, gave recall@10
            0.82 on 1M hard synthetic vectors where 128 gave 0.999, for twice the build time
            (``docs/benchmarks.md``).
        refine: for a compressed index (IVF-PQ, SQ), re-score the top ``k x refine``
            candidates with the exact float32 vectors kept beside it on disk; 0 turns it off.
            On 1M hard vectors IVF-PQ's recall@10 went from 0.55 to 0.99 with 10.
        quantize: store codes instead of float32 vectors in the preset's index
            (:data:`INDEX_QUANTIZERS`): ``"int8"``, one byte per dimension (FAISS's scalar
            quantizer, ``SQ8``: flat, IVF or HNSW), 4x smaller; ``"binary"``, one bit per
            dimension (the sign, searched by Hamming distance: FAISS's ``LSH`` without
            rotation, flat only), 32x smaller. Candidates are re-scored exactly (``refine``).
    """

    preset: str = "flat"
    factory: str | None = None
    nprobe: int = 32
    ef_search: int = 128
    ram_budget_gb: float | None = None
    ef_construction: int = 128
    refine: int = 10
    quantize: str | None = None

    def __post_init__(self) -> None:
        if self.factory is None:
            check_choice("index preset", self.preset, INDEX_PRESETS)
        if self.quantize is not None:
            check_choice("quantize", self.quantize, INDEX_QUANTIZERS)
            presets = QUANTIZABLE[self.quantize]
            if self.factory is not None or self.preset not in presets:  # auto sizes floats
                what = f"factory {self.factory!r}" if self.factory else f"preset {self.preset!r}"
                raise ValueError(
                    f"quantize = {self.quantize!r} does not apply to the {what}; it applies to "
                    f"the presets {', '.join(presets)}"
                )
        for name in ("nprobe", "ef_search", "ef_construction"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be at least 1")
        if self.refine < 0:
            raise ValueError(f"refine = {self.refine} must be 0 (off) or more")


@dataclass(frozen=True)
class BM25Config:
    """bm25s settings: the Lucene BM25 variant with an English Snowball stemmer and stopwords."""

    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stemmer: str | None = "english"
    stopwords: str | None = "en"
    title_sep: str = " "


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning every problem (missing, a folder, not UTF-8, bad syntax) into
    an :class:`Ar2Error` naming the file."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise Ar2Error(f"{path}: invalid TOML ({err}). Fix the syntax at that position.") from err
    except UnicodeDecodeError as err:
        raise Ar2Error(
            f"{path}: not UTF-8 ({err.reason} at byte {err.start}). Fix: save it as UTF-8"
        ) from None
    except OSError as err:
        raise Ar2Error(
            f"{path}: cannot read the config ({err.strerror or err}). Fix: give the path of a "
            "TOML file (see src/ar2/presets/ for examples)"
        ) from None


def preset_path(name: str) -> Path:
    """The TOML file of the preset ``name`` (``src/ar2/presets``); others list the presets.

    Example:
        >>> preset_path("quick").name
        'quick.toml'
    """
    folder = Path(__file__).parent / "presets"
    names = sorted(p.stem for p in folder.glob("*.toml"))
    if name not in names:
        raise Ar2Error(
            f"unknown preset {name!r}. Fix: choose one of {', '.join(names)}, or pass --config"
        )
    return folder / f"{name}.toml"


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A config's settings: a TOML file, or a run's ``config.json`` (train again as that run
    did: its data record is left out).

    Example:
        >>> import json, pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "config.json"
        >>> _ = p.write_text(json.dumps({"rounds": 1, "data": {"path": "/d"}}))
        >>> load_config_file(p)
        {'rounds': 1}
    """
    if not str(path).endswith(".json"):
        return load_toml(path)
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise Ar2Error(
            f"{path}: cannot read the run's config ({err}). Fix: give a TOML file"
        ) from None
    if not isinstance(saved, dict):
        raise Ar2Error(f"{path}: not a run's config.json. Fix: give a TOML file or a run's config")
    return {k: v for k, v in saved.items() if k != "data"}


@dataclass(frozen=True)
class StageConfig:
    """One training stage of one model: its steps, batch, negatives and optimiser.

    Attributes:
        steps: Optimiser updates in the stage (per round for AR2 rounds).
        batch_size: Queries per update.
        n_neg: Hard negatives per query (the group is 1 positive + ``n_neg``).
        lr: Peak AdamW learning rate (linear warm-up, then linear decay to 0).
        warmup_ratio: Share of the model's total steps spent warming up.
        weight_decay: AdamW weight decay (LayerNorm and bias excluded).
        max_grad_norm: Gradient clipping (AR2: 2.0).
        head_lr: Learning rate of a newly initialised head (the ranker's classifier), which
            learns far too slowly at the encoder's rate; ``None`` uses ``lr``.
        epochs: Passes over the training queries; with it, a stage takes the steps that many
            passes need on the collection at hand, at most ``steps`` (:meth:`steps_for`), so a
            small collection is not trained for a hundred epochs. ``None``: ``steps`` always.
    """

    steps: int = 100
    batch_size: int = 16
    n_neg: int = 1
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 2.0
    head_lr: float | None = None
    epochs: float | None = None

    def __post_init__(self) -> None:
        check_ranges(self, at_least={"steps": 0, "batch_size": 1, "n_neg": 0,
                                      "weight_decay": 0.0, "warmup_ratio": 0.0},
                      above={"lr": 0.0, "max_grad_norm": 0.0, "head_lr": 0.0, "epochs": 0.0},
                      at_most={"warmup_ratio": 1.0})  # fmt: skip

    def steps_for(self, queries: int) -> int:
        """The stage's steps on ``queries`` training queries: ``steps``, or with ``epochs``
        the steps that many passes take, at most ``steps``.

        Example:
            >>> StageConfig(steps=150, batch_size=32, epochs=7).steps_for(709)
            150
            >>> StageConfig(steps=150, batch_size=32, epochs=7).steps_for(35)
            8
        """
        if self.epochs is None:
            return self.steps
        return min(self.steps, max(1, math.ceil(self.epochs * queries / self.batch_size)))


@dataclass(frozen=True)
class SamplingConfig:
    """How the round's retriever steps draw their batches (:mod:`ar2.train.tas`; TAS-Balanced,
    Hofstätter et al. 2021). Both off: AR2's sampling, random queries and random negatives.

    Attributes:
        topic_batches: fill each batch from one k-means topic of the training queries (then
            another while it is not full), clustered once per round with the round's starting
            retriever, so in-batch negatives share a topic (useful with ``in_batch = true``).
        topics: the number of topics; ``None``: training queries / ``retriever.batch_size``.
        balanced_margins: draw each query's negatives balanced over ``bins`` equal-width bins
            of the teacher's margins ``T(q, p+) - T(q, p-)`` over the first ``pool`` of its
            mined candidates (needs ``retriever_loss = "ar2"``: the teacher's scores).
        bins: margin bins (TAS-B: 10).
        pool: mined candidates per query the teacher scores for the draw.
    """

    topic_batches: bool = False
    topics: int | None = None
    balanced_margins: bool = False
    bins: int = 10
    pool: int = 16

    def __post_init__(self) -> None:
        check_ranges(self, at_least={"topics": 1, "bins": 1, "pool": 1})


@dataclass(frozen=True)
class TeacherConfig:
    """What the retriever learns from in the AR2 rounds: the scores of its distillation target
    and its adversarial reward (:mod:`ar2.train.teacher`).

    Attributes:
        kind: ``"ranker"``: the ranker's logits, AR2 as published. ``"ensemble"``: a per-query
            normalised mix ``scale · Σ_i w_i norm(t_i)`` of the ranker, the retriever the round
            starts from and BM25 (Geng et al.'s ensemble teacher, ``seed_methods.md`` §6).
        ranker: ``w`` of the ranker's logits (ensemble).
        retriever: ``w`` of the round's starting retriever, frozen (ensemble).
        bm25: ``w`` of BM25 (ensemble).
        norm: ``"minmax"`` (each query's candidates scaled to [0, 1], as Geng et al.) or
            ``"zscore"`` (as :mod:`ar2.fusion`).
        scale: multiplies the normalised mix, giving it the spread of logits.
        tune: choose the weights before each round's retriever steps: every mix on a 0.1 grid
            over the weights (summing to 1) reranks the dev run's top ``rerank_k``, and the best
            on dev wins (ties: more weight on the ranker). ``False``: the weights above.
    """

    kind: str = "ranker"
    ranker: float = 1.0
    retriever: float = 0.0
    bm25: float = 0.0
    norm: str = "minmax"
    scale: float = 10.0
    tune: bool = False

    def __post_init__(self) -> None:
        check_choice("teacher kind", self.kind, TEACHERS)
        check_choice("teacher norm", self.norm, TEACHER_NORMS)
        check_ranges(self, at_least={"ranker": 0.0, "retriever": 0.0, "bm25": 0.0},
                     above={"scale": 0.0})  # fmt: skip
        if self.kind == "ensemble" and not self.tune and not sum(self.weights().values()) > 0:
            raise Ar2Error(
                '[teacher] kind = "ensemble" with every weight 0. Fix: give the ranker, '
                "retriever or bm25 a weight above 0, or set tune = true"
            )

    def weights(self) -> dict[str, float]:
        """The mix's weights by part (:data:`TEACHER_PARTS`)."""
        return {part: float(getattr(self, part)) for part in TEACHER_PARTS}


@dataclass(frozen=True)
class AR2Config:
    """The AR2 recipe (``ar2_spec.md`` §5): warm-ups, mining, adversarial rounds.

    Attributes:
        seed: Seeds data order, negative sampling and dropout; each step's randomness is a pure
            function of (seed, stage, step), so a resumed run replays the same batches.
        retriever_model: Start of the retriever (default: bundled all-MiniLM-L6-v2).
        ranker_model: Start of the ranker (default: all-MiniLM-L6-v2 with a new head).
        ranker_from_g0: Start the ranker from the warm-up retriever G0 instead (our addition):
            an encoder already tuned on the corpus learns the ranking task faster.
        query_max_length: Query token cut-off for both models.
        doc_max_length: Document token cut-off for the retriever (and the ranker's pair).
        train_doc_max_length: Cut documents shorter inside training batches (both models);
            indexing, mining and evaluation keep ``doc_max_length``. Our addition for CPU
            budgets: a step at 128 tokens costs about a quarter of one at 256. ``None``: the same.
        ranker_max_length: The ranker's (query, document) pair cut-off when it scores (dev and
            test reranking, the saved model); ``None``: ``query_max_length + doc_max_length``.
        scale: Similarity scale of the retriever scores (1 / temperature); 20 for cosine
            encoders such as MiniLM, 1 for AR2's raw dot product. A ``"cosine"`` ranker
            scales its scores by it too.
        ranker_head: How the ranker scores a pair (:data:`RANKER_HEADS`): ``"classifier"``, a
            new linear head on ``[CLS]`` (AR2 and sentence-transformers); ``"cosine"``, the
            scaled cosine of the pooled query and document segments of the joint pass, which
            keeps what the starting bi-encoder knows (our addition, docs/ar2.md).
        g0: Warm-up retriever (in-batch + BM25 hard negatives).
        d0: Warm-up ranker; ``skip_d0`` skips it (spec §9, AR2 issue #4).
        ranker: Ranker steps per round; retriever: retriever steps per round.
        rounds: Adversarial rounds (index refresh → ranker → retriever → dev eval).
        mine_k: Candidates retrieved per training query when mining.
        mine_rank_start: False-negative filter: the candidates at ranks 1..N of a query's mined
            list (positives counted) are no negatives; 0 keeps them (sentence-transformers'
            ``range_min``). Applies to every mining, BM25's included.
        mine_relative_margin: False-negative filter: a candidate scored above ``(1 - m) x``
            the best positive's score (by the retriever that mined it) is no negative;
            ``None`` keeps them (sentence-transformers' ``relative_margin``).
        adv_lambda: λ in λ·L_ADV + (1−λ)·L_KD.
        adv_reduction: ``sum`` (original code) or ``mean_per_query``.
        kd_temperature: Temperature of the teacher's distillation target.
        kd_loss: The distillation term L_KD: ``"ce"`` (AR2's cross-entropy to the teacher's
            softmax), ``"margin_mse"`` (TAS-B) or ``"nway_kl"`` (JaColBERTv2.5's KL over
            min-max normalised scores); :data:`ar2.losses.KD_LOSSES`.
        teacher: What the retriever distils and is rewarded by (:class:`TeacherConfig`): the
            ranker (AR2) or an ensemble of the ranker, the previous retriever and BM25.
        sampling: How the round's retriever steps draw queries and negatives
            (:class:`SamplingConfig`): AR2's random draws, or TAS-Balanced's topic batches
            and margin-balanced negatives.
        in_batch: Add in-batch negatives to the AR2 retriever loss (our addition).
        in_batch_masks_positives: In that in-batch term, leave out of each query's softmax
            its own positives drawn for another query (DPR's loss counts them as
            negatives). The tas-b recipe sets it: a topic batch gathers queries that share
            positives (538 of SciFact's 809 training queries share one).
        retriever_loss: ``"ar2"`` (λ·L_ADV + (1−λ)·L_KD against the ranker) or
            ``"contrastive"`` (the ANCE-style control: in-batch + mined negatives, no ranker)
            or ``"decoupled"`` (DEXML: the same passages, each positive's softmax leaving
            out the query's other positives; :func:`ar2.losses.decoupled_softmax`).
        refresh: Re-mine negatives with the current retriever every round; ``False`` keeps
            G0's (round-0) negatives throughout (the static-negatives ablation).
        dev_queries: The most training queries held out as dev when the data has no dev
            split (see ``dev_fraction``).
        dev_fraction: The share of the training queries held out as dev: the dev slice is
            ``min(dev_queries, max(5, round(dev_fraction x training queries)))``
            (:func:`ar2.train.data.dev_size`; the presets use 0.125). ``None``: exactly
            ``dev_queries`` (the rule before the field existed).
        eval_measure: The dev measure logged every round.
        rerank_k: Hits the ranker reranks when G+D is evaluated (dev and test).
        tune_fusion: Rerank by ``(1 - w) z(G) + w z(D)`` with ``w`` tuned on dev each round
            (our addition, :mod:`ar2.fusion`); ``False`` ranks by the ranker alone, as AR2 does.
        checkpoint_every: Steps between checkpoints inside a training stage.
        deliver: Which round's models the run delivers (``retriever/``, ``ranker/``,
            ``index/``, and ar2-g, ar2-g+d in the report): ``"best"``, the round (0 = G0 and
            D0) whose retriever scored highest on dev (ties: the later), with that round's
            ranker and fusion weight; ``"last"``, the last round's, whatever dev said.
        average_rounds: Checkpoint averaging (JaColBERTv2.5, Clavié 2024): the run delivers
            the uniform average of the weights of the retrievers of the last N rounds up to
            the delivered one (round 0 = G0), indexed and measured on dev (``dev-avg`` in
            ``metrics.jsonl``); 1 delivers the round's own retriever.
        attention_dropout: Dropout on the attention probabilities of both models while they
            train; ``None`` keeps the model's own (0.1 for MiniLM). At 0 a CPU runs the fused
            attention kernel (:mod:`ar2.encoders.dropout`; speed and dev effect in
            ``docs/benchmarks.md``).
        fast_dropout: The other dropout layers draw their masks from 16 random bits per
            element, four to a 64-bit draw, instead of torch's Bernoulli sampler: the same rate
            (within 1/65536), another random stream, a cheaper CPU step.
        train_attention: The attention kernel of training passes (:data:`TRAIN_ATTENTION`):
            ``"torch"`` lets torch pick (fused on a CPU without attention dropout);
            ``"flash"`` or ``"math"`` forces one; ``"auto"`` takes the one measured faster for
            each model on this kind of device (:mod:`ar2.encoders.attention`). The same
            function, rounded differently; inference keeps torch's choice.
        index: The FAISS index built at every refresh: exact (``flat``) as in the spec; a
            corpus too large for it can take ``hnsw``, ``ivfpq`` or ``auto`` (:class:`IndexConfig`).
        recipe: The recipe whose settings these are (:data:`RECIPES`, ``ar2 train --recipe``,
            :mod:`ar2.train.recipes`); a run refuses settings that contradict it.
        adore: ADORE's stage (Zhan et al. 2021) after the rounds: the delivered retriever's
            query tower alone trains against the delivered round's fixed index, with
            ``adore_negatives`` negatives retrieved at every step and the ΔMRR-weighted
            pairwise loss (:mod:`ar2.train.adore`); 0 steps (the default) skips it.
    """

    seed: int = 42
    retriever_model: str | None = None
    ranker_model: str | None = None
    ranker_from_g0: bool = False
    query_max_length: int = 64
    doc_max_length: int = 256
    train_doc_max_length: int | None = None
    ranker_max_length: int | None = None
    scale: float = 20.0
    ranker_head: str = "classifier"
    g0: StageConfig = StageConfig(steps=100, batch_size=32, n_neg=1, lr=2e-5)
    d0: StageConfig = StageConfig(steps=100, batch_size=8, n_neg=7, lr=2e-5)
    skip_d0: bool = False
    ranker: StageConfig = StageConfig(steps=50, batch_size=8, n_neg=7, lr=1e-5)
    retriever: StageConfig = StageConfig(steps=100, batch_size=8, n_neg=7, lr=1e-5)
    rounds: int = 2
    mine_k: int = 100
    mine_rank_start: int = 0
    mine_relative_margin: float | None = None
    adv_lambda: float = 0.5
    adv_reduction: str = "sum"
    kd_temperature: float = 1.0
    kd_loss: str = "ce"
    teacher: TeacherConfig = TeacherConfig()
    sampling: SamplingConfig = SamplingConfig()
    in_batch: bool = False
    in_batch_masks_positives: bool = False
    retriever_loss: str = "ar2"
    refresh: bool = True
    dev_queries: int = 100
    dev_fraction: float | None = None
    eval_measure: str = "nDCG@10"
    rerank_k: int = 50
    tune_fusion: bool = True
    checkpoint_every: int = 50
    deliver: str = "best"
    average_rounds: int = 1
    attention_dropout: float | None = None
    fast_dropout: bool = False
    train_attention: str = "torch"
    index: IndexConfig = IndexConfig()
    recipe: str = "ar2"
    adore: StageConfig = StageConfig(steps=0, batch_size=32, n_neg=0, lr=1e-5)
    adore_negatives: int = 200

    def __post_init__(self) -> None:
        check_ranges(
            self,
            at_least={"rounds": 0, "mine_k": 1, "mine_rank_start": 0, "query_max_length": 1,
                      "doc_max_length": 1, "ranker_max_length": 1, "dev_queries": 1,
                      "rerank_k": 1, "checkpoint_every": 1, "adv_lambda": 0.0, "average_rounds": 1,
                      "attention_dropout": 0.0, "adore_negatives": 1},
            above={"scale": 0.0, "kd_temperature": 0.0, "dev_fraction": 0.0,
                   "mine_relative_margin": 0.0},
            at_most={"mine_relative_margin": 1.0, "adv_lambda": 1.0, "dev_fraction": 0.9,
                     "attention_dropout": 0.9},
        )  # fmt: skip
        check_choice("retriever_loss", self.retriever_loss, RETRIEVER_LOSSES)
        check_choice("adv_reduction", self.adv_reduction, ADV_REDUCTIONS)
        check_choice("kd_loss", self.kd_loss, KD_LOSSES)
        check_choice("deliver", self.deliver, DELIVERIES)
        check_choice("ranker_head", self.ranker_head, RANKER_HEADS)
        check_choice("train_attention", self.train_attention, TRAIN_ATTENTION)
        check_choice("recipe", self.recipe, RECIPES)
        if self.sampling.balanced_margins and self.retriever_loss != "ar2":
            raise ValueError(
                f"[sampling] balanced_margins needs the teacher's scores, and retriever_loss = "
                f'{self.retriever_loss!r} has no teacher; set retriever_loss = "ar2" or '
                "balanced_margins = false"
            )
        if self.sampling.balanced_margins and self.sampling.pool < self.retriever.n_neg:
            raise ValueError(
                f"[sampling] pool = {self.sampling.pool} is smaller than retriever.n_neg = "
                f"{self.retriever.n_neg}: every group would repeat negatives; set pool to at "
                "least n_neg"
            )
        if self.mine_rank_start >= self.mine_k:
            raise ValueError(
                f"mine_rank_start = {self.mine_rank_start} drops every one of the mine_k = "
                f"{self.mine_k} candidates; set it below mine_k"
            )
        cut = self.train_doc_max_length
        if cut is not None and not 0 < cut <= self.doc_max_length:
            raise ValueError(
                f"train_doc_max_length = {cut} must be in 1..doc_max_length "
                f"({self.doc_max_length}); leave it out to train at doc_max_length"
            )


@dataclass(frozen=True)
class PretrainConfig:
    """``ar2 pretrain``: a retriever and a ranker trained on pairs made from the corpus alone
    (:mod:`ar2.data.pseudo`; no queries, no qrels).

    Attributes:
        seed: Seeds the pairs, the batches and the dropout of every step.
        model: Start of both models (default: bundled all-MiniLM-L6-v2).
        query_max_length: Token cut-off of the pseudo-queries (and of the real ones later).
        doc_max_length: Token cut-off of the pseudo-positives in training.
        ranker_max_length: The ranker's pair cut-off (query + document).
        scale: Similarity scale of the retriever scores (as in ``ar2 train``).
        ict_fraction: Share of the pairs that are ICT pairs (Lee et al. 2019: a sentence of a
            document is the query, the rest of the document the positive); the others are
            independent crops (Izacard et al. 2022: two random spans of a document).
        ict_keep: Probability that the ICT sentence stays in its positive (Lee et al.: 0.1).
        crop_min: Shortest crop, as a share of the document's words (Contriever: 0.05-0.5
            of a 256-token chunk; we crop the document, cut at ``doc_max_length``).
        crop_max: Longest crop, as a share of the document's words.
        word_delete: Probability that each word of a crop is deleted (Contriever: 0.1).
        retriever: The retriever's stage: in-batch negatives, plus ``n_neg`` BM25 negatives
            per pseudo-query (as the ranker's; 0: in-batch only, the default).
        ranker: The ranker's stage: listwise CE over the pseudo-positive and ``n_neg``
            negatives from BM25's top ``negatives_k`` for the pseudo-query (its source left out).
        negatives_k: BM25 depth the ranker's negatives are drawn from.
        kd_weight: Weight of a distillation term in the retriever's loss (0: none, the
            default): the retriever's scores over each pseudo-query's group (its positive and
            ``retriever.n_neg`` BM25 negatives) learn the softmax of a teacher that reads no
            query or judgement, the start model (frozen) and BM25 mixed per query after
            min-max normalisation, times 10 (:func:`ar2.train.pretrain.label_free_teacher`;
            AR2's L_KD, paper Eq. 11). On SciFact's training queries the two fused (RRF, as
            ``ar2 eval``'s hybrid) score 0.057 nDCG@10 above the start model alone
            (docs/benchmarks.md). Needs ``retriever.n_neg >= 1``.
        teacher_bm25: BM25's weight in that teacher; the start model has the rest.
        pair_weight: Weight of the pseudo-positive's in-batch NLL beside ``kd_weight``'s term
            (1; 0: the teacher alone, no NLL term; the teacher's BM25 part still sees the
            pseudo-positive's source whole). Without ``kd_weight`` the NLL is the whole loss.
        ranker_from_retriever: Start the ranker from the pretrained retriever (as
            ``ranker_from_g0`` in ``ar2 train``) rather than from ``model``.
        ranker_head: The ranker's head, as in ``ar2 train`` (:data:`RANKER_HEADS`).
        attention_dropout: As in ``ar2 train``.
        fast_dropout: As in ``ar2 train``.
        train_attention: As in ``ar2 train`` (``"auto"``: the faster kernel for this device).
        checkpoint_every: Steps between checkpoints.
        check_queries: Held-out pseudo-queries of the report's check: each searches a sample
            of ``check_docs`` documents (its source among them) with the start model and the
            pretrained one.
        check_docs: Documents in that sample.
    """

    seed: int = 42
    model: str | None = None
    query_max_length: int = 64
    doc_max_length: int = 128
    ranker_max_length: int = 192
    scale: float = 20.0
    ict_fraction: float = 0.5
    ict_keep: float = 0.1
    crop_min: float = 0.1
    crop_max: float = 0.5
    word_delete: float = 0.1
    retriever: StageConfig = StageConfig(steps=200, batch_size=32, n_neg=0, lr=2e-5)
    ranker: StageConfig = StageConfig(steps=100, batch_size=8, n_neg=7, lr=1e-4, head_lr=1e-3)
    negatives_k: int = 30
    kd_weight: float = 0.0
    teacher_bm25: float = 0.5
    pair_weight: float = 1.0
    ranker_from_retriever: bool = True
    ranker_head: str = "classifier"
    attention_dropout: float | None = 0.0
    fast_dropout: bool = True
    train_attention: str = "auto"
    checkpoint_every: int = 50
    check_queries: int = 200
    check_docs: int = 1000

    def __post_init__(self) -> None:
        check_ranges(
            self,
            at_least={"query_max_length": 1, "doc_max_length": 1, "ranker_max_length": 1,
                      "ict_fraction": 0.0, "ict_keep": 0.0, "word_delete": 0.0,
                      "negatives_k": 1, "checkpoint_every": 1, "check_queries": 0,
                      "check_docs": 1, "attention_dropout": 0.0, "kd_weight": 0.0,
                      "teacher_bm25": 0.0, "pair_weight": 0.0},
            above={"scale": 0.0, "crop_min": 0.0},
            at_most={"ict_fraction": 1.0, "ict_keep": 1.0, "crop_max": 1.0,
                     "word_delete": 0.9, "attention_dropout": 0.9, "teacher_bm25": 1.0},
        )  # fmt: skip
        if self.kd_weight > 0 and self.retriever.n_neg < 1:
            raise ValueError(
                f"kd_weight = {self.kd_weight} distils over each pseudo-query's group, and "
                "retriever.n_neg = 0 gives it none; set retriever.n_neg >= 1 (BM25 negatives)"
            )
        kd_only = {
            f.name: f.default
            for f in dataclasses.fields(self)
            if f.name in ("pair_weight", "teacher_bm25")
        }
        if self.kd_weight == 0 and any(getattr(self, k) != v for k, v in kd_only.items()):
            raise ValueError(
                f"pair_weight = {self.pair_weight} and teacher_bm25 = {self.teacher_bm25} "
                "set kd_weight's term, and kd_weight = 0; set kd_weight > 0, or leave them "
                f"at their defaults ({kd_only})"
            )
        check_choice("ranker_head", self.ranker_head, RANKER_HEADS)
        check_choice("train_attention", self.train_attention, TRAIN_ATTENTION)
        if self.crop_min > self.crop_max:
            raise ValueError(
                f"crop_min = {self.crop_min} is above crop_max = {self.crop_max}; "
                "set crop_min <= crop_max"
            )

    @property
    def train_doc_max_length(self) -> int:
        """The documents' cut-off inside training batches (``doc_max_length`` here)."""
        return self.doc_max_length


@dataclass(frozen=True)
class DistillConfig:
    """``ar2 distill-query``: a query tower of fewer layers that learns the run's query vectors
    (ScalingNote's query-tower distillation); the document index stays.

    Attributes:
        layers: Transformer layers the student keeps of the teacher's, evenly spread with the
            first and the last kept (:func:`ar2.train.distill.kept_layers`), each initialised
            from the teacher's.
        seed: Seeds the pseudo-queries, the batches and the dropout.
        pseudo_queries: Sentences of the corpus (as ICT's pseudo-queries, :mod:`ar2.data.pseudo`)
            added to the run's training queries as texts to learn from; no label is read.
        stage: The student's training: ``steps`` updates of ``batch_size`` texts at ``lr``
            (``n_neg`` unused).
        latency_queries: Queries encoded one at a time, by the teacher and by the student, for
            the report's latency.
        checkpoint_every: Steps between checkpoints.
        attention_dropout: As in ``ar2 train`` (0: the fused attention kernel on CPU).
        fast_dropout: As in ``ar2 train``.
        train_attention: As in ``ar2 train`` (``"auto"``: the faster kernel for this device).
    """

    layers: int = 3
    seed: int = 42
    pseudo_queries: int = 5_000
    stage: StageConfig = StageConfig(steps=500, batch_size=64, n_neg=0, lr=1e-4)
    latency_queries: int = 100
    checkpoint_every: int = 200
    attention_dropout: float | None = 0.0
    fast_dropout: bool = True
    train_attention: str = "auto"

    def __post_init__(self) -> None:
        check_ranges(
            self,
            at_least={"layers": 1, "pseudo_queries": 0, "latency_queries": 1,
                      "checkpoint_every": 1, "attention_dropout": 0.0},
            at_most={"attention_dropout": 0.9},
        )  # fmt: skip
        check_choice("train_attention", self.train_attention, TRAIN_ATTENTION)


@dataclass(frozen=True)
class ANNCURConfig:
    """``ar2 anncur``: k-NN search with a run's ranker alone through a CUR factorisation of
    its scores (ANNCUR, Yadav et al. 2022), against retrieve-then-rerank (:mod:`ar2.anncur`).

    Attributes:
        anchor_queries: Training queries (``k_q``) the ranker scores against every document
            offline; the anchor documents' scores give the CUR factorisation.
        anchor_items: The most anchor documents (``k_i``) a query is scored against; the study
            tries :data:`ar2.anncur.ITEMS` up to it.
        docs: Documents searched: a seeded subset of the corpus holding every relevant
            document of the measured queries (``None``: the whole corpus). The offline cost is
            ``(anchor_queries + queries) x docs`` ranker calls.
        queries: Test queries measured (a seeded sample).
        k: The ranker's exact top ``k`` whose recall is measured.
        seed: Seeds the queries, the documents and the anchors.
    """

    anchor_queries: int = 50
    anchor_items: int = 100
    docs: int | None = 1000
    queries: int = 50
    k: int = 10
    seed: int = 42

    def __post_init__(self) -> None:
        check_ranges(self, at_least={"anchor_queries": 1, "anchor_items": 1, "docs": 1,
                                     "queries": 1, "k": 1})  # fmt: skip


@dataclass(frozen=True)
class ADOREConfig:
    """``ar2 adore``: a run's query tower trained against its fixed document index, with
    negatives retrieved at every step (ADORE, Zhan et al. 2021).

    Attributes:
        negatives: Documents retrieved from the index for each training query at each step
            (ADORE's dynamic negatives; JPQ's ``loss_neg_topK``, 200).
        seed: Seeds the batches and the dropout.
        stage: ``steps`` updates of ``batch_size`` training queries (with ``epochs``, the
            steps that many passes take, at most ``steps``) at the query tower's rate ``lr``;
            ``n_neg`` unused.
        checkpoint_every: Steps between checkpoints.
        attention_dropout: As in ``ar2 train`` (0: the fused attention kernel on CPU).
        fast_dropout: As in ``ar2 train``.
        train_attention: As in ``ar2 train`` (``"auto"``: the faster kernel for this device).
        kd_weight: ``w`` of a teacher's distillation added to ADORE's loss, ``L_pairwise + w ·
            L_KD`` (AR2's L_KD, Eqs. 11-12, over each query's top ``kd_depth`` documents as
            the search found them at that step); 0: ADORE as published, no teacher.
        kd_depth: The documents of each query's search that the teacher scores (``ar2
            adore`` keeps each (query, document) score, computed once).
        teacher: The teacher (as ``ar2 train``'s ``[teacher]``): the run's ranker, or a mix of
            the ranker, the run's retriever (the starting query tower) and BM25; with
            ``tune`` chosen on the run's dev queries over the starting tower's top 20.
    """

    negatives: int = 200
    seed: int = 42
    stage: StageConfig = StageConfig(steps=200, batch_size=32, n_neg=0, lr=1e-5)
    checkpoint_every: int = 100
    attention_dropout: float | None = 0.0
    fast_dropout: bool = True
    train_attention: str = "auto"
    kd_weight: float = 0.0
    kd_depth: int = 10
    teacher: TeacherConfig = TeacherConfig()

    def __post_init__(self) -> None:
        check_ranges(
            self,
            at_least={"negatives": 1, "checkpoint_every": 1, "attention_dropout": 0.0,
                      "kd_weight": 0.0, "kd_depth": 2},
            at_most={"attention_dropout": 0.9},
        )  # fmt: skip
        check_choice("train_attention", self.train_attention, TRAIN_ATTENTION)
        if self.kd_weight > 0 and self.kd_depth > self.negatives:
            raise Ar2Error(
                f"kd_depth = {self.kd_depth} is more than the {self.negatives} documents "
                "searched per query (negatives). Fix: lower kd_depth or raise negatives"
            )


@dataclass(frozen=True)
class SparseConfig:
    """``ar2 sparse``: the inference-free learned sparse retriever (Geng et al. 2024) trained
    over a finished run's mined groups (:mod:`ar2.train.sparse`).

    Attributes:
        start: The document encoder's start: ``"g0"`` (the run's warm-up retriever, which
            knows the collection) or ``"model"`` (the run's ``retriever_model``, MiniLM by
            default). Either way the MLM head starts from the tied word embeddings.
        doc_max_length: Token limit of a document, in training and in the index.
        start_terms: A new MLM head's bias is set so that a document has about this many
            non-zero terms at the start (:func:`ar2.encoders.sparse.calibrate`, on 256 sampled
            documents); 0 leaves it at 0 (every term non-zero).
        flops_weight: Weight of the documents' FLOPS penalty (:func:`ar2.losses.flops`), reached
            after ``flops_warmup`` steps of a quadratic ramp (:func:`ar2.losses.flops_weight`).
        flops_warmup: Steps of the ramp (0: the full weight from the start).
        precision: ``auto`` (bf16 autocast where the CPU or GPU has it), ``bf16`` or ``fp32``,
            for training and for encoding the corpus.
        seed: Seeds the batches and the dropout.
        stage: ``steps`` updates of ``batch_size`` queries, each with its positive and
            ``n_neg`` of its mined negatives (round 0's groups), at ``lr``.
        checkpoint_every: Steps between checkpoints.
        attention_dropout: As in ``ar2 train``.
        fast_dropout: As in ``ar2 train``.
        train_attention: As in ``ar2 train``.
        kd_weight: ``w`` of a teacher's distillation added to the loss, ``L_CE + w · L_KD +
            λ · FLOPS`` (AR2's L_KD, Eqs. 11-12, over each group's positive and negatives):
            Geng et al.'s heterogeneous teacher; 0: the labels alone.
        teacher: The teacher of ``kd_weight > 0`` (the settings of ``ar2 adore``'s, with
            another default: there the ranker alone, here Geng et al.'s ensemble): the mix of
            the run's ranker, its dense retriever and BM25 (min-max per query), its weights
            chosen on the run's dev queries over the retriever's top 20.
    """

    start: str = "g0"
    doc_max_length: int = 256
    start_terms: int = 128
    flops_weight: float = 1e-3
    flops_warmup: int = 50
    precision: str = "auto"
    seed: int = 42
    stage: StageConfig = StageConfig(steps=200, batch_size=8, n_neg=3, lr=2e-5)
    checkpoint_every: int = 50
    attention_dropout: float | None = 0.0
    fast_dropout: bool = True
    train_attention: str = "auto"
    kd_weight: float = 0.0
    teacher: TeacherConfig = TeacherConfig(kind="ensemble", tune=True)

    def __post_init__(self) -> None:
        check_choice("start", self.start, SPARSE_STARTS)
        check_choice("precision", self.precision, PRECISIONS)
        check_ranges(
            self,
            at_least={"doc_max_length": 8, "start_terms": 0, "flops_weight": 0.0,
                      "flops_warmup": 0, "kd_weight": 0.0,
                      "checkpoint_every": 1, "attention_dropout": 0.0},
            at_most={"attention_dropout": 0.9},
        )  # fmt: skip
        check_choice("train_attention", self.train_attention, TRAIN_ATTENTION)


@dataclass(frozen=True)
class JPQConfig(ADOREConfig):
    """``ar2 jpq``: a run's query tower and the centroids of a product quantizer trained
    together against the fixed PQ codes of its documents (JPQ, Zhan et al. 2021): ADORE's
    loop (:class:`ADOREConfig`, whose settings it has) over a compressed index.

    Attributes:
        m: Sub-vectors (bytes per document, 8-bit codes): the index keeps ``m`` bytes of a
            document instead of ``4 x dim`` (48 of 1,536 for MiniLM: 32x). It divides the
            vectors' dimension.
        stage: As in ADORE; ``head_lr`` is the centroids' rate (JPQ: 1e-4 at 48
            sub-vectors).
    """

    stage: StageConfig = StageConfig(steps=200, batch_size=32, n_neg=0, lr=1e-5, head_lr=1e-4)
    m: int = 48

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, at_least={"m": 1})
        if self.kd_weight > 0:
            raise Ar2Error(
                "kd_weight > 0 in ar2 jpq: a teacher distils into ar2 adore's loop only. "
                "Fix: drop kd_weight, or run ar2 adore"
            )


@dataclass(frozen=True)
class RepCONCConfig(JPQConfig):
    """``ar2 repconc``: both towers and the PQ centroids trained together under a uniform
    (constrained) clustering of the documents, then JPQ's stage over the new codes (RepCONC,
    Zhan et al. 2022; :mod:`ar2.train.repconc`). It has JPQ's settings (:class:`JPQConfig`),
    which its second stage and the report's JPQ arm use.

    Attributes:
        constrained: The first stage: ``steps`` updates of ``batch_size`` of the run's mined
            groups (a positive and ``n_neg`` of G0's negatives each), the encoder at ``lr``
            (RepCONC: 2e-5), the centroids at ``head_lr`` (RepCONC: 5e-4, "10-30x the
            encoder's").
        mse_weight: Weight of the clustering MSE beside the ranking loss (RepCONC: 1e-4).
        epsilon: Sinkhorn's entropy (over distances rescaled to [-1, 1]; RepCONC: 0.003).
        sinkhorn_iterations: Sinkhorn's alternating normalisations (RepCONC: 100).
    """

    constrained: StageConfig = StageConfig(steps=60, batch_size=16, n_neg=3, lr=2e-5,
                                           head_lr=5e-4)  # fmt: skip
    mse_weight: float = 1e-4
    epsilon: float = 0.003
    sinkhorn_iterations: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, at_least={"mse_weight": 0.0, "sinkhorn_iterations": 1},
                     above={"epsilon": 0.0})  # fmt: skip
        if self.constrained.n_neg < 1:
            raise Ar2Error(
                "constrained.n_neg = 0: the first stage needs a mined negative per query. "
                "Fix: --set constrained.n_neg=3"
            )


STAGES = ("g0", "d0", "ranker", "retriever")
"""The training stages of an :class:`AR2Config` (its :class:`StageConfig` tables)."""


def load_ar2_config(data: dict[str, Any], source: str = "config") -> AR2Config:
    """Build an :class:`AR2Config` from nested TOML data (stage and index tables become
    their dataclasses).

    Example:
        >>> load_ar2_config({"rounds": 3, "g0": {"steps": 10}}).g0.steps
        10
    """
    kinds = config_tables()
    for key in kinds.keys() & data.keys():
        if not isinstance(data[key], dict):
            raise Ar2Error(
                f"{source}: {key} = {data[key]!r} is {kind_of(data[key])}, not a table. "
                f"Fix: write its settings under a [{key}] header, like [{key}] steps = 100"
            )
    fields = {
        k: from_dict(kinds[k], v, f"{source} [{k}]") if k in kinds else v for k, v in data.items()
    }
    return from_dict(AR2Config, fields, source)


def config_tables(root: type = AR2Config) -> dict[str, type]:
    """The fields of ``root`` (:class:`AR2Config`, :class:`PretrainConfig`) written as TOML
    tables, with their dataclasses.

    Example:
        >>> sorted(config_tables())
        ['adore', 'd0', 'g0', 'index', 'ranker', 'retriever', 'sampling', 'teacher']
        >>> sorted(config_tables(PretrainConfig))
        ['ranker', 'retriever']
    """
    kinds = {"StageConfig": StageConfig, "IndexConfig": IndexConfig,
             "TeacherConfig": TeacherConfig, "SamplingConfig": SamplingConfig}  # fmt: skip
    return {f.name: kinds[f.type] for f in dataclasses.fields(root) if f.type in kinds}


def load_pretrain_config(data: dict[str, Any], source: str = "config") -> PretrainConfig:
    """Build a :class:`PretrainConfig` from nested TOML data.

    Example:
        >>> load_pretrain_config({"retriever": {"steps": 10}}).retriever.steps
        10
    """
    return load_tables(PretrainConfig, data, source)


def load_tables(root: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build dataclass ``root`` from nested data: its tables (:func:`config_tables`) become
    their dataclasses, each checked as :func:`ar2._typed.from_dict` checks.

    Example:
        >>> load_tables(DistillConfig, {"layers": 2, "stage": {"steps": 10}}).stage.steps
        10
    """
    kinds = config_tables(root)
    fields = {
        k: from_dict(kinds[k], v, f"{source} [{k}]") if k in kinds else v for k, v in data.items()
    }
    return from_dict(root, fields, source)
