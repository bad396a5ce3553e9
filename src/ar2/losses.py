"""AR2 training losses: pure functions of score matrices.

Zhang et al., "Adversarial Retriever-Ranker for Dense Text Retrieval", ICLR 2022
(arXiv 2110.03611), as the released ``microsoft/AR2`` code implements it (``ar2_spec.md``
§2.3, §3.2-3.3, §5.5). Only training code imports this module, so it imports torch at the
top; ``import ar2`` does not import it.

Each query ``b`` has a *group* of ``M = 1 + n`` candidates with the positive at column 0.

- ``s_bj`` are retriever scores (raw dot products) and ``P_b = softmax_j(s_bj)``. The positive
  is inside the softmax.
- ``r_bj`` are ranker scores, ``Q_b = softmax_j(r_bj / T)``, and
  ``reward_bj = log sigmoid(r_b0 - r_bj)``: the ranker's pairwise log-probability of preferring
  the positive over candidate ``j``.
- Ranker outputs are always detached, so no gradient ever reaches the ranker from
  :func:`ar2_distillation`, :func:`ar2_adversarial` or :func:`ar2_retriever_loss`.

The losses, each a scalar to minimise:

- :func:`in_batch_contrastive`: warm-up retriever G0 (DPR, ``de.py``), in-batch negatives;
  :func:`in_batch_nll` is the same on a precomputed score matrix.
- :func:`decoupled_softmax`: DEXML's multi-positive contrastive loss, where a positive's
  denominator leaves out the query's other positives (``retriever_loss = "decoupled"``).
- :func:`listwise_ce`: ranker D, ``mean_b -log softmax(r_b)[0]`` (Eq. 7).
- :func:`ar2_distillation`: ``L_KD = mean_b -sum_j Q_bj log P_bj`` (Eqs. 11-12).
- :func:`ar2_adversarial`: ``L_ADV = sum_b sum_j reward_bj log P_bj`` (Eqs. 8-10).
- :func:`ar2_retriever_loss`: the G-step, ``lambda L_ADV + (1 - lambda) L_KD``.
- :func:`vector_distillation`: a smaller query tower learning the full one's vectors
  (ScalingNote's query-tower distillation; ``ar2 distill-query``).
- :func:`rank_weighted_pairwise`: ADORE's and JPQ's ΔMRR-weighted pairwise loss over the
  results of a search (``ar2 jpq``).
- :func:`constrained_quantization`: RepCONC's stage-1 loss, a softmax over quantised documents
  with a straight-through gradient, plus the clustering MSE (``ar2 repconc``).
- :func:`flops`: the FLOPS sparsity regulariser of learned sparse retrieval (documents only in
  the inference-free retriever, :mod:`ar2.encoders.sparse`), with :func:`flops_weight`'s ramp.

L_KD is one of :data:`KD_LOSSES`, chosen by name (``kd_loss`` in the config):

- ``"ce"``: :func:`ar2_distillation`, AR2's own (Eqs. 11-12);
- ``"margin_mse"``: :func:`margin_mse`, TAS-B's Margin-MSE (Hofstätter et al. 2021, Eq. 1);
- ``"nway_kl"``: :func:`normalised_kl`, JaColBERTv2.5's n-way KL over min-max normalised
  scores (Clavié 2024, §3).

The losses see one batch. What data parallelism adds (the summed L_ADV counted once per
process, in-batch negatives gathered from every process) and the optional in-batch term of
the AR2 step live in the training step, :func:`ar2.train.steps.ar2_shard_loss`.

Facts about L_ADV:

- For ``j = 0`` (the positive against itself) the reward is ``log sigmoid(0) = log 0.5``
  (about -0.693), so the positive also gets a fixed weight.
- Every reward is <= 0 and every ``log P`` is <= 0, so every term is >= 0 and ``L_ADV >= 0``.
- ``dL_ADV/ds_bj = reward_bj - P_bj * sum_k reward_bk``. Descent raises ``log P_bj`` most
  for the candidates with the largest ``|reward_bj|``, the ones the ranker cannot separate
  from the positive: "the retriever learns to retrieve documents that fool the ranker".

Scale: with reduction ``"sum"`` (the original, per GPU batch) L_ADV adds ``B * M`` terms
(8 x 16 in the paper), while L_KD is a mean over the ``B`` queries. ``lambda = 0.5`` therefore
weighs the adversarial gradient much more than the distillation gradient. ``"mean_per_query"``
divides L_ADV by ``B``; a user who picks it must raise ``lambda`` to stay faithful.

Temperature vs scale: a *temperature* ``t`` divides scores (``softmax(s / t)``); a *scale*
multiplies them, so scale 20 is temperature 0.05. AR2 uses temperature 1 everywhere: for the
retriever the scores are raw dot products, and the ranker temperature ``T`` (original
``--temperature_normal``) is 1.

Where we differ from the original code:

1. ``log_softmax`` and ``logsigmoid`` replace ``log(p + 1e-7)`` (for ``log P`` and for the
   reward). Since ``|log(p + 1e-7) - log p| <= 1e-7 / p``, they differ only at extreme logits
   (``p`` below about ``1e-5``), where the original flattens out near ``log 1e-7 = -16.1``
   and we return the exact, numerically stable value.
2. The AR2 step can add an in-batch cross-entropy term (:func:`in_batch_nll`, added by
   :func:`ar2.train.steps.ar2_shard_loss` with ``in_batch = true``). It is off by default:
   the original AR2 stage has no in-batch negatives.
3. ``ar2_adversarial(..., reduction="mean_per_query")`` is an option; the default ``"sum"``
   is the original.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def in_batch_contrastive(
    query_vecs: torch.Tensor,
    doc_vecs: torch.Tensor,
    *,
    temperature: float = 1.0,
    group: int | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """DPR loss with in-batch negatives, for the warm-up retriever G0 (AR2 ``de.py``).

    Each query is scored against every passage of the batch: its own positive and hard
    negatives, plus every other query's passages. The loss is the mean NLL of its own positive:
    ``mean_b -log softmax_k(q_b . d_k / temperature)[b * (1 + h)]``.

    The AR2 stage itself uses no in-batch negatives (:func:`ar2_retriever_loss`). With a
    single query the loss reduces to :func:`listwise_ce` over its own group.

    Args:
        query_vecs: ``(B, d)`` query embeddings.
        doc_vecs: ``(B * (1 + h), d)`` passage embeddings as ``B`` consecutive groups
            ``[positive, h hard negatives]``; ``h = 0`` gives plain in-batch negatives.
        temperature: divides the dot products (1 in AR2; scale = 1 / temperature).
        group: ``1 + h`` (default: the rows of ``doc_vecs`` per query).
        offset: for data parallelism (:mod:`ar2.distributed`): ``doc_vecs`` holds the groups
            of every process's queries, ``query_vecs`` are queries ``offset, offset + 1, ...``
            of them, and query ``b``'s positive is row ``(offset + b) * group``.

    Returns:
        The scalar loss.

    Example:
        >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> d = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
        >>> round(in_batch_contrastive(q, d).item(), 4)  # -log(e / (e + 3))
        0.7437
    """
    _check_temperature(temperature)
    if query_vecs.dim() != 2 or doc_vecs.dim() != 2 or query_vecs.shape[1] != doc_vecs.shape[1]:
        raise ValueError(
            f"query_vecs must be (B, d) and doc_vecs (B * (1 + h), d); "
            f"got {tuple(query_vecs.shape)} and {tuple(doc_vecs.shape)}"
        )
    batch, n_docs = query_vecs.shape[0], doc_vecs.shape[0]
    if group is None:  # one process: exactly one group per query
        group = n_docs // batch if batch and n_docs % batch == 0 else 0
    if batch == 0 or group < 1 or n_docs % group or (offset + batch) * group > n_docs:
        raise ValueError(
            f"doc_vecs must hold a group of (1 + h) passages per query for B = {batch} "
            f"queries (from query {offset} on); got {n_docs} rows"
        )
    scores = query_vecs @ doc_vecs.T / temperature  # (batch, all queries * group)
    return in_batch_nll(scores, group=group, offset=offset)  # ()


def in_batch_nll(
    scores: torch.Tensor, *, group: int, offset: int = 0, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean NLL of each query's positive among every passage of the batch (DPR's loss).

    ``mean_b -log softmax_k(scores_bk)[(offset + b) * group]``: the passages are groups of
    ``group`` in query order, each positive first. :func:`in_batch_contrastive` is this loss on
    dot products; the AR2 step adds it as its optional in-batch term
    (:func:`ar2.train.steps.ar2_shard_loss`). With a single query it is :func:`listwise_ce`.
    With ``exclude`` the softmax runs over the passages it leaves in: a query's other relevant
    passages (another query's positive that is also its own) are not its negatives.

    Args:
        scores: ``(B, N * group)`` scores of ``B`` queries against the groups of ``N >= B``
            queries (a temperature or scale already applied).
        group: ``1 + h``, passages per query.
        offset: the scored queries are queries ``offset, offset + 1, ...`` of the ``N``.
        exclude: ``(B, N * group)`` True where a passage is left out of the query's softmax;
            never the query's own positive. ``None``: every passage counts.

    Returns:
        The scalar loss.

    Example:
        >>> scores = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
        >>> round(in_batch_nll(scores, group=2).item(), 4)  # -log(e / (e + 3))
        0.7437
        >>> out = torch.tensor([[False, False, True, False], [False] * 4])
        >>> round(in_batch_nll(scores, group=2, exclude=out).item(), 4)  # first e / (e + 2)
        0.6476
    """
    rows = torch.arange(scores.shape[0], device=scores.device)  # (batch,)
    positives = (offset + rows) * group  # (batch,)
    if exclude is not None:
        if exclude.shape != scores.shape or exclude[rows, positives].any():
            raise ValueError(
                f"exclude must be (B, N * group) = {tuple(scores.shape)} and leave each "
                f"query's own positive in; got {tuple(exclude.shape)}"
            )
        scores = scores.masked_fill(exclude, float("-inf"))  # (batch, N * group)
    return F.cross_entropy(scores, positives)  # ()


def decoupled_softmax(scores: torch.Tensor, *, positives: torch.Tensor) -> torch.Tensor:
    """DEXML's decoupled softmax (Gupta et al., ICLR 2024, §3, "decoupled softmax"): each
    positive is contrasted with the negatives only, never with the query's other positives.

    ``L = mean_b (1 / |P_b|) sum_{l in P_b} -log(e^{s_bl} / (e^{s_bl} + sum_{j not in P_b}
    e^{s_bj}))``, computed as ``softplus(logsumexp_{j not in P_b} s_bj - s_bl)``. With one
    positive per row it is :func:`in_batch_nll`; where a row holds several (a query's other
    relevant documents among the batch's passages, or its positive drawn again for another
    query) the softmax that DPR and G0 use would push the query away from them.

    Args:
        scores: ``(B, N)`` scores of ``B`` queries against ``N`` passages (scale applied).
        positives: ``(B, N)`` bool, ``True`` where the passage is relevant to the query; every
            row holds at least one.

    Returns:
        The scalar loss.

    Example:
        >>> s = torch.tensor([[1.0, 1.0, 0.0]])
        >>> p = torch.tensor([[True, True, False]])
        >>> round(decoupled_softmax(s, positives=p).item(), 4)  # -log(e / (e + 1)), twice
        0.3133
    """
    if scores.dim() != 2 or positives.shape != scores.shape:
        raise ValueError(
            f"scores must be (B, N) and positives a bool mask of the same shape; got "
            f"{tuple(scores.shape)} and {tuple(positives.shape)}"
        )
    counts = positives.sum(dim=-1)  # (batch,)
    if bool((counts == 0).any()):
        raise ValueError("every row of positives needs at least one True (its positive)")
    negatives = scores.masked_fill(positives, float("-inf")).logsumexp(dim=-1)  # (batch,)
    terms = F.softplus(negatives.unsqueeze(1) - scores)  # (batch, N): -log p per positive
    return ((terms * positives).sum(dim=-1) / counts).mean()  # ()


def listwise_ce(scores: torch.Tensor) -> torch.Tensor:
    """Listwise softmax cross-entropy of the ranker D (spec §3.2, paper Eq. 7).

    ``L_D = mean_b -log softmax_j(r_bj)[0]``: cross-entropy with target class 0. The warm-up
    ranker D0 and the AR2 ranker phase both use it. It is :func:`in_batch_contrastive`
    without the other queries' passages, and :func:`ar2_distillation` with a one-hot target.

    Args:
        scores: ``(B, 1 + n)`` ranker logits, positive at column 0.

    Returns:
        The scalar loss.

    Example:
        >>> round(listwise_ce(torch.tensor([[2.0, 0.0, 0.0]])).item(), 4)  # -log(e^2/(e^2+2))
        0.2395
    """
    _check_group(scores, "scores")
    log_p = F.log_softmax(scores, dim=-1)  # (batch, 1 + n)
    return -log_p[:, 0].mean()


def ar2_distillation(
    retriever_scores: torch.Tensor, ranker_scores: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """L_KD: the ranker distils into the retriever (spec §3.3 step 3, paper Eqs. 11-12).

    ``L_KD = mean_b -sum_j Q_bj log P_bj`` with ``Q_b = softmax(r_b / T)`` (detached, no
    gradient) and ``P_b = softmax(s_b)``: cross-entropy, equal to ``KL(Q || P)`` up to a
    constant. :func:`listwise_ce` is the special case of a one-hot ``Q``.

    Args:
        retriever_scores: ``(B, 1 + n)`` retriever scores ``s``, positive at column 0.
        ranker_scores: ``(B, 1 + n)`` ranker logits ``r`` for the same candidates.
        temperature: ``T``, divides the ranker logits only (1 in AR2). Large ``T`` flattens
            ``Q`` towards uniform.

    Returns:
        The scalar loss.

    Example:
        >>> s = torch.tensor([[0.0, 0.0]]); r = torch.tensor([[5.0, -5.0]])
        >>> round(ar2_distillation(s, r).item(), 4)  # both Q weights times -log 0.5
        0.6931
    """
    _check_pair(retriever_scores, ranker_scores)
    _check_temperature(temperature)
    targets = torch.softmax(ranker_scores.detach() / temperature, dim=-1)  # (batch, 1 + n)
    log_p = F.log_softmax(retriever_scores, dim=-1)  # (batch, 1 + n)
    return -(targets * log_p).sum(dim=-1).mean()


def margin_mse(
    retriever_scores: torch.Tensor, ranker_scores: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """Margin-MSE (TAS-B, Hofstätter et al. 2021, Eq. 1): the student's margins match the
    teacher's.

    ``L = mean_{b, j >= 1} ((s_b0 - s_bj) - (r_b0 - r_bj) / T)^2``: the margin between the
    positive and each negative, for the retriever scores ``s`` and the teacher scores ``r``
    (detached). The paper has one negative per query; over a group each (positive,
    negative) pair is one term. Unlike :func:`ar2_distillation` it is not shift-invariant only:
    it asks the margins themselves, so ``s`` and ``r`` must be on comparable scales (the
    retriever's ``scale`` sets ``s``'s).

    Args:
        retriever_scores: ``(B, 1 + n)`` retriever scores ``s``, positive at column 0.
        ranker_scores: ``(B, 1 + n)`` teacher scores ``r`` for the same candidates.
        temperature: ``T``, divides the teacher's margins (1: the paper).

    Returns:
        The scalar loss.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0]]); r = torch.tensor([[3.0, 0.0, 1.0]])
        >>> margin_mse(s, r).item()  # ((1 - 3)^2 + (2 - 2)^2) / 2
        2.0
    """
    _check_pair(retriever_scores, ranker_scores)
    _check_temperature(temperature)
    teacher = ranker_scores.detach() / temperature  # (batch, 1 + n)
    student_margin = retriever_scores[:, :1] - retriever_scores[:, 1:]  # (batch, n)
    teacher_margin = teacher[:, :1] - teacher[:, 1:]  # (batch, n)
    return F.mse_loss(student_margin, teacher_margin)  # ()


def minmax(scores: torch.Tensor) -> torch.Tensor:
    """Each row scaled to ``[0, 1]``: ``(x - min) / (max - min)``; a constant row gives zeros.

    Example:
        >>> minmax(torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])).tolist()
        [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]
    """
    low = scores.min(dim=-1, keepdim=True).values  # (batch, 1)
    spread = scores.max(dim=-1, keepdim=True).values - low  # (batch, 1)
    return (scores - low) / spread.clamp_min(torch.finfo(scores.dtype).tiny)  # (batch, M)


def normalised_kl(
    retriever_scores: torch.Tensor, ranker_scores: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """n-way KL over min-max normalised scores (JaColBERTv2.5, Clavié 2024, §3).

    ``L = mean_b KL(softmax(mm(r_b) / T) || softmax(mm(s_b) / T))`` where ``mm`` scales each
    query's scores to ``[0, 1]`` (:func:`minmax`): the teacher's and the student's scales no
    longer matter, only the shapes of their score lists. Both lists lie in ``[0, 1]``, so a
    temperature below 1 keeps the distributions from being flat (the paper's exact
    normalisation is not published; this is the min-max reading of it).

    Args:
        retriever_scores: ``(B, M)`` retriever scores ``s``.
        ranker_scores: ``(B, M)`` teacher scores ``r`` for the same candidates (detached).
        temperature: ``T``, divides both normalised lists.

    Returns:
        The scalar loss; 0 when the normalised lists agree.

    Example:
        >>> s = torch.tensor([[10.0, 0.0]]); r = torch.tensor([[1.0, 0.0]])
        >>> normalised_kl(s, r).item()  # the same list after min-max
        0.0
    """
    _check_pair(retriever_scores, ranker_scores)
    _check_temperature(temperature)
    teacher = minmax(ranker_scores.detach()) / temperature  # (batch, M)
    student = minmax(retriever_scores) / temperature  # (batch, M)
    log_q = F.log_softmax(teacher, dim=-1)  # (batch, M)
    log_p = F.log_softmax(student, dim=-1)  # (batch, M)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)  # ()


KD_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "ce": ar2_distillation,  # AR2's Eqs. 11-12
    "margin_mse": margin_mse,  # TAS-B
    "nway_kl": normalised_kl,  # JaColBERTv2.5
}
"""The distillation term L_KD of :func:`ar2_retriever_loss`, by name (``kd_loss``); each takes
``(retriever_scores, ranker_scores, *, temperature)``."""


def adversarial_reward(ranker_scores: torch.Tensor) -> torch.Tensor:
    """The REINFORCE reward of L_ADV: ``reward_bj = log sigmoid(r_b0 - r_bj)`` (paper Eq. 10).

    It is the ranker's log-probability of preferring the positive over candidate ``j``, always
    <= 0, detached (a constant), and ``log 0.5`` at ``j = 0``.

    Args:
        ranker_scores: ``(B, 1 + n)`` ranker logits, positive at column 0.

    Returns:
        ``(B, 1 + n)`` rewards without gradient.

    Example:
        >>> adversarial_reward(torch.tensor([[1.0, 1.0, 101.0]])).tolist()  # doctest: +ELLIPSIS
        [[-0.693..., -0.693..., -100.0]]
    """
    _check_group(ranker_scores, "ranker_scores")
    r = ranker_scores.detach()  # (batch, 1 + n)
    return F.logsigmoid(r[:, :1] - r)  # (batch, 1 + n)


def _sum(terms: torch.Tensor) -> torch.Tensor:
    return terms.sum()


def _mean_per_query(terms: torch.Tensor) -> torch.Tensor:
    return terms.sum() / terms.shape[0]


ADV_REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sum": _sum,  # the original: sum over the B x (1 + n) terms of a GPU batch
    "mean_per_query": _mean_per_query,  # the same divided by B
}
"""How :func:`ar2_adversarial` reduces its ``(B, 1 + n)`` terms to a scalar."""


def ar2_adversarial(
    retriever_scores: torch.Tensor, ranker_scores: torch.Tensor, *, reduction: str = "sum"
) -> torch.Tensor:
    """L_ADV: the adversarial (REINFORCE) retriever term (spec §3.3 step 4, paper Eqs. 8-10).

    ``L_ADV = sum_b sum_j reward_bj * log P_bj`` with ``reward`` from
    :func:`adversarial_reward` (no gradient) and ``P_b = softmax(s_b)`` over the whole group,
    positive included. The terms are not weighted by ``P``: the sampled negatives stand for
    samples from the retriever (the paper's Monte-Carlo estimate). ``L_ADV >= 0``; descent
    raises ``P_bj`` most where ``|reward_bj|`` is largest. Mixed with :func:`ar2_distillation`
    by :func:`ar2_retriever_loss`.

    Args:
        retriever_scores: ``(B, 1 + n)`` retriever scores, positive at column 0.
        ranker_scores: ``(B, 1 + n)`` ranker logits for the same candidates.
        reduction: ``"sum"`` (the original, per GPU batch) or ``"mean_per_query"`` (the sum
            divided by ``B``; rescale ``lambda`` if you use it).

    Returns:
        The scalar loss.

    Example:
        >>> s = torch.tensor([[0.0, 0.0]]); r = torch.tensor([[0.0, 0.0]])
        >>> round(ar2_adversarial(s, r).item(), 4)  # 2 * log 0.5 * log 0.5
        0.9609
    """
    reduce = _get_reduction(reduction)
    _check_pair(retriever_scores, ranker_scores)
    reward = adversarial_reward(ranker_scores)  # (batch, 1 + n), constant
    log_p = F.log_softmax(retriever_scores, dim=-1)  # (batch, 1 + n)
    return reduce(reward * log_p)  # (batch, 1 + n) terms -> ()


def ar2_retriever_loss(
    *,
    retriever_scores: torch.Tensor,
    ranker_scores: torch.Tensor,
    adv_lambda: float = 0.5,
    reduction: str = "sum",
    temperature: float = 1.0,
    kd: str = "ce",
) -> torch.Tensor:
    """The AR2 retriever (G-step) loss ``L_G = lambda L_ADV + (1 - lambda) L_KD``.

    L_ADV is the REINFORCE term of paper Eqs. 8-10 (:func:`ar2_adversarial`), L_KD the
    regulariser of Eqs. 11-12 (:func:`ar2_distillation`); the released code mixes them with
    ``lambda = --adv_lambda`` (spec §3.3 step 5). ``lambda = 0`` is exactly L_KD, ``lambda = 1``
    exactly L_ADV. The README uses ``lambda = 0.5``; the authors later suggested 0.2-0.3
    (issue #4). The ranker is frozen: no gradient reaches ``ranker_scores``.

    This is the loss of the batch it is given. Data parallelism and the optional in-batch term
    (our addition) are the training step's: :func:`ar2.train.steps.ar2_shard_loss`.

    Args:
        retriever_scores: ``(B, M)`` retriever scores ``s`` of each query's group,
            ``M = 1 + n``, positive at column 0.
        ranker_scores: ``(B, M)`` ranker logits ``r`` for the same candidates.
        adv_lambda: ``lambda`` in ``[0, 1]``, the weight of L_ADV.
        reduction: L_ADV reduction, ``"sum"`` (original) or ``"mean_per_query"``.
        temperature: ranker temperature ``T`` of L_KD (1 in AR2).
        kd: the L_KD of :data:`KD_LOSSES`: ``"ce"`` (AR2), ``"margin_mse"``, ``"nway_kl"``.

    Returns:
        The scalar loss.

    Example:
        >>> s = torch.tensor([[0.0, 0.0]]); r = torch.tensor([[5.0, -5.0]])
        >>> loss = ar2_retriever_loss(retriever_scores=s, ranker_scores=r, adv_lambda=0.0)
        >>> round(loss.item(), 4)  # L_KD alone: -log 0.5
        0.6931
    """
    if not 0.0 <= adv_lambda <= 1.0:
        raise ValueError(f"adv_lambda must be in [0, 1]; got {adv_lambda}")
    distil = _get_kd(kd)
    adv = ar2_adversarial(retriever_scores, ranker_scores, reduction=reduction)  # ()
    kd_term = distil(retriever_scores, ranker_scores, temperature=temperature)  # ()
    return adv_lambda * adv + (1.0 - adv_lambda) * kd_term  # ()


def vector_distillation(*, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Query-tower distillation (ScalingNote, "Scaling up Retrievers with Large Language Models
    for Real-World Dense Retrieval"): the student's vector of each query learns the teacher's,
    by a squared-error and a cosine term,
    ``mean_b ||s_b - t_b||^2 + mean_b (1 - cos(s_b, t_b))``. The document index, built by the
    teacher's document tower, stays as it is.

    Args:
        student: ``(B, d)`` the student's query vectors.
        teacher: ``(B, d)`` the teacher's vectors of the same queries (no gradient reaches them).

    Returns:
        The scalar loss.

    Example:
        >>> s = torch.tensor([[1.0, 0.0]]); t = torch.tensor([[0.0, 1.0]])
        >>> vector_distillation(student=s, teacher=t).item()  # ||s - t||^2 = 2, 1 - cos = 1
        3.0
    """
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(
            f"student and teacher must both be (B, d); got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}"
        )
    target = teacher.detach()  # (batch, d)
    squared = (student - target).pow(2).sum(-1)  # (batch,)
    cosine = F.cosine_similarity(student, target, dim=-1)  # (batch,)
    return squared.mean() + (1.0 - cosine).mean()  # ()


def rank_weighted_pairwise(
    *, scores: torch.Tensor, relevant: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """The ranking-oriented pairwise loss of ADORE and JPQ (Zhan et al. 2021, "Optimizing Dense
    Retrieval Model Training with Hard Negatives", Eq. 8; "Jointly Optimizing Query Encoder
    and Product Quantization", §4.3): RankNet's pairwise loss, each pair weighted by how much
    swapping it changes the reciprocal rank (LambdaRank's ΔMRR).

    Each query's candidates are in rank order: column ``c`` is rank ``c + 1`` in the search
    that found them (relevant documents it missed come after its results). For each pair of a
    relevant candidate ``i`` and an irrelevant one ``j``,
    ``l_ij = |1 / rank_j - 1 / rank_i| * log(1 + exp(s_j - s_i))``; the loss is the mean of
    ``l_ij`` over each query's pairs, then over the queries that have both kinds.

    Args:
        scores: ``(B, C)`` the model's scores of each query's candidates, in rank order.
        relevant: ``(B, C)`` bool, the relevant candidates.
        valid: ``(B, C)`` bool, the real candidates (``False``: padding); default all.

    Returns:
        The scalar loss (0 with a gradient when no query has a pair).

    Example:
        >>> s = torch.tensor([[1.0, 2.0, 0.0]]); rel = torch.tensor([[False, True, False]])
        >>> # pairs (rank 2, rank 1): |1 - 1/2| softplus(1 - 2); (rank 2, rank 3): |1/3 - 1/2|
        >>> # softplus(0 - 2); mean of the two: (0.5 * 0.31326 + 0.16667 * 0.12693) / 2
        >>> round(rank_weighted_pairwise(scores=s, relevant=rel).item(), 5)
        0.08889
    """
    if scores.dim() != 2 or relevant.shape != scores.shape:
        raise ValueError(
            f"scores and relevant must both be (B, C); got {tuple(scores.shape)} and "
            f"{tuple(relevant.shape)}"
        )
    valid = torch.ones_like(relevant) if valid is None else valid  # (batch, C)
    ranks = torch.arange(1, scores.shape[1] + 1, device=scores.device)  # (C,)
    inverse = 1.0 / ranks.to(scores.dtype)  # (C,)
    pos = relevant & valid  # (batch, C)
    neg = ~relevant & valid  # (batch, C)
    pairs = pos[:, :, None] & neg[:, None, :]  # (batch, C_i, C_j)
    weight = (inverse[None, :] - inverse[:, None]).abs()  # (C_i, C_j)
    diff = scores[:, None, :] - scores[:, :, None]  # (batch, C_i, C_j): s_j - s_i
    terms = torch.where(pairs, weight * F.softplus(diff), 0.0)  # (batch, C_i, C_j)
    count = pairs.sum(dim=(1, 2))  # (batch,)
    has = count > 0  # (batch,)
    if not bool(has.any()):
        return scores.sum() * 0.0  # ()
    per_query = terms.sum(dim=(1, 2))[has] / count[has]  # (queries with pairs,)
    return per_query.mean()  # ()


def constrained_quantization(
    *,
    queries: torch.Tensor,
    documents: torch.Tensor,
    quantized: torch.Tensor,
    targets: torch.Tensor,
    excluded: torch.Tensor,
    scale: float,
    mse_weight: float,
) -> torch.Tensor:
    """RepCONC's stage-1 loss (Zhan et al., "Learning Discrete Representations via Constrained
    Clustering for Effective and Efficient Dense Retrieval", WSDM 2022, Eqs. 5-8):
    ``L = L_rank + mse_weight * L_mse``.

    - ``L_rank = mean_b -log softmax_j(scale * q_b . d~_j)[t_b]``, the query's continuous
      vector against the batch's *quantised* documents ``d~_j``, the columns in ``excluded``
      left out (the query's other relevant documents, repeats).
    - ``L_mse = mean_j ||d~_j - d_j||^2``, which keeps documents near their centroids.
    - The straight-through estimator: ``d~_j`` enters ``L_rank`` as
      ``d~_j + d_j - stop_grad(d_j)``, so its gradient updates the centroids and reaches
      the continuous ``d_j`` (and the document encoder) unchanged, past the discrete choice.

    Args:
        queries: ``(B, d)`` query vectors.
        documents: ``(N, d)`` the documents' continuous vectors, in the quantiser's space.
        quantized: ``(N, d)`` their reconstructions from the centroids of their codes.
        targets: ``(B,)`` the column of each query's positive.
        excluded: ``(B, N)`` bool, columns left out of a query's softmax (never its target).
        scale: multiplies the dot products (the run's ``scale``; RepCONC's is 1).
        mse_weight: weight of ``L_mse`` (RepCONC: 1e-4).

    Returns:
        The scalar loss.

    Example:
        >>> q = torch.tensor([[1.0, 0.0]])
        >>> d = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> dq = torch.tensor([[0.5, 0.0], [0.0, 1.0]])  # the first quantised to half
        >>> none = torch.zeros(1, 2, dtype=torch.bool)
        >>> loss = constrained_quantization(queries=q, documents=d, quantized=dq,
        ...     targets=torch.tensor([0]), excluded=none, scale=1.0, mse_weight=0.1)
        >>> round(loss.item(), 4)  # -log(e^0.5 / (e^0.5 + 1)) + 0.1 * (0.25 + 0) / 2
        0.4866
    """
    if documents.shape != quantized.shape or queries.shape[1:] != documents.shape[1:]:
        raise ValueError(
            f"queries must be (B, d) and documents and quantized (N, d); got "
            f"{tuple(queries.shape)}, {tuple(documents.shape)} and {tuple(quantized.shape)}"
        )
    rows = torch.arange(len(targets), device=targets.device)  # (B,)
    if bool(excluded[rows, targets].any()):
        raise ValueError("excluded marks a query's own target: it cannot leave its softmax")
    passed = quantized + documents - documents.detach()  # (N, d): value d~, gradient to both
    scores = scale * queries @ passed.T  # (B, N)
    ranking = F.cross_entropy(scores.masked_fill(excluded, float("-inf")), targets)  # ()
    mse = (quantized - documents).pow(2).sum(dim=-1).mean()  # ()
    return ranking + mse_weight * mse


def flops(*, weights: torch.Tensor) -> torch.Tensor:
    """The FLOPS regulariser of learned sparse retrieval (Paria et al. 2020, "Minimizing FLOPs
    to Learn Efficient Sparse Representations", ICLR 2020; SPLADE's, and on documents only the
    inference-free retriever's of Geng et al. 2024): ``sum_t (mean_i |w_it|)^2``, a smooth
    proxy for the expected number of multiplications a sparse dot product makes. It pushes
    every vocabulary term alike; the inference-free retriever's query weights are IDFs, so
    the ranking loss holds up only the informative terms and the frequent ones fall to zero
    (its "IDF-aware" penalty).

    Args:
        weights: ``(B, V)`` the documents' term weights (non-negative in SPLADE).

    Returns:
        The scalar penalty.

    Example:
        >>> w = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
        >>> flops(weights=w).item()  # column means 2, 0, 1: 4 + 0 + 1
        5.0
    """
    if weights.dim() != 2:
        raise ValueError(f"weights must be (B, V); got {tuple(weights.shape)}")
    return weights.abs().mean(dim=0).pow(2).sum()  # ()


def flops_weight(step: int, *, weight: float, warmup: int) -> float:
    """The FLOPS weight at ``step`` (counted from 1): ``weight * min(1, step / warmup)^2``,
    SPLADE's quadratic ramp (Formal et al. 2021; the inference-free retriever's sample code
    ramps the same way), which lets the ranking loss shape the
    weights before sparsity takes hold; ``warmup = 0`` applies ``weight`` from the start.

    Example:
        >>> [flops_weight(s, weight=0.1, warmup=4) for s in (1, 2, 4, 9)]
        [0.00625, 0.025, 0.1, 0.1]
    """
    if warmup <= 0:
        return weight
    return weight * min(1.0, step / warmup) ** 2


def _get_kd(name: str) -> Callable[..., torch.Tensor]:
    try:
        return KD_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown kd_loss {name!r}; choose one of {sorted(KD_LOSSES)}") from None


def _get_reduction(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return ADV_REDUCTIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown reduction {name!r}; choose one of {sorted(ADV_REDUCTIONS)}"
        ) from None


def _check_group(scores: torch.Tensor, name: str) -> None:
    if scores.dim() != 2 or scores.shape[0] < 1 or scores.shape[1] < 2:
        raise ValueError(
            f"{name} must have shape (B, M): B >= 1 queries, M >= 2 candidates with the "
            f"positive at column 0; got {tuple(scores.shape)}"
        )


def _check_pair(retriever_scores: torch.Tensor, ranker_scores: torch.Tensor) -> None:
    if retriever_scores.shape != ranker_scores.shape:
        raise ValueError(
            f"retriever_scores and ranker_scores must have the same shape (B, M); got "
            f"{tuple(retriever_scores.shape)} and {tuple(ranker_scores.shape)}"
        )
    _check_group(retriever_scores, "retriever_scores")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
