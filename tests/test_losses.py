"""AR2 losses against hand computations on tiny tensors (plain ``math``, not torch ops)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from ar2.config import AR2Config

if TYPE_CHECKING:
    from torch import Tensor

torch = pytest.importorskip("torch")

from ar2.losses import (  # noqa: E402
    adversarial_reward,
    ar2_adversarial,
    ar2_distillation,
    ar2_retriever_loss,
    decoupled_softmax,
    in_batch_contrastive,
    in_batch_nll,
    listwise_ce,
)
from ar2.train.steps import ar2_shard_loss  # noqa: E402

S = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]  # retriever scores (B = 2, M = 3)
R = [[2.0, 1.5, -1.0], [0.0, 1.0, -2.0]]  # ranker scores; query 2's negative 1 beats the positive


def _log_softmax(row: list[float]) -> list[float]:
    log_z = math.log(sum(math.exp(x) for x in row))
    return [x - log_z for x in row]


def _softmax(row: list[float]) -> list[float]:
    z = sum(math.exp(x) for x in row)
    return [math.exp(x) / z for x in row]


def _log_sigmoid(x: float) -> float:
    return -math.log(1.0 + math.exp(-x))


def _hand_kd(s: list[list[float]], r: list[list[float]], t: float = 1.0) -> float:
    rows = [
        -sum(q * lp for q, lp in zip(_softmax([x / t for x in rr]), _log_softmax(sr)))
        for sr, rr in zip(s, r)
    ]
    return sum(rows) / len(rows)


def _hand_adv_sum(s: list[list[float]], r: list[list[float]]) -> float:
    return sum(
        _log_sigmoid(rr[0] - rj) * lp
        for sr, rr in zip(s, r)
        for rj, lp in zip(rr, _log_softmax(sr))
    )


def _t(rows: list[list[float]], grad: bool = False) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def test_listwise_ce_matches_hand_computation() -> None:
    expected = -(_log_softmax(S[0])[0] + _log_softmax(S[1])[0]) / 2
    assert listwise_ce(_t(S)).item() == pytest.approx(expected, rel=1e-12)


def test_in_batch_contrastive_matches_hand_computation() -> None:
    # B = 2 queries, h = 1 hard negative each, 2-d vectors.
    q = [[1.0, 2.0], [-1.0, 0.5]]
    d = [[1.0, 0.0], [0.0, 1.0], [0.5, -1.0], [-2.0, 1.0]]  # [pos0, neg0, pos1, neg1]
    scores = [[sum(a * b for a, b in zip(qi, dk)) for dk in d] for qi in q]
    expected = -(_log_softmax(scores[0])[0] + _log_softmax(scores[1])[2]) / 2
    got = in_batch_contrastive(_t(q), _t(d))
    assert got.item() == pytest.approx(expected, rel=1e-12)

    scaled = [[x / 0.5 for x in row] for row in scores]
    expected_t = -(_log_softmax(scaled[0])[0] + _log_softmax(scaled[1])[2]) / 2
    got_t = in_batch_contrastive(_t(q), _t(d), temperature=0.5)
    assert got_t.item() == pytest.approx(expected_t, rel=1e-12)


def test_in_batch_contrastive_without_hard_negatives() -> None:
    q = [[1.0, 0.0], [0.0, 1.0]]
    d = [[2.0, 0.0], [1.0, 1.0]]  # h = 0: one positive per query
    # scores: q0 -> [2, 1] (target 0), q1 -> [0, 1] (target 1)
    expected = -(_log_softmax([2.0, 1.0])[0] + _log_softmax([0.0, 1.0])[1]) / 2
    assert in_batch_contrastive(_t(q), _t(d)).item() == pytest.approx(expected, rel=1e-12)


def test_decoupled_softmax_leaves_the_other_positives_out_of_each_denominator() -> None:
    # Row 0 has two positives (columns 0 and 2), row 1 one (column 3).
    scores = [[2.0, 0.5, 1.0, -1.0], [0.0, 1.0, 0.5, 1.5]]
    mask = [[True, False, True, False], [False, False, False, True]]

    def term(row: list[float], keep: list[bool], col: int) -> float:
        negatives = sum(math.exp(x) for x, pos in zip(row, keep) if not pos)
        return -math.log(math.exp(row[col]) / (math.exp(row[col]) + negatives))

    expected = ((term(scores[0], mask[0], 0) + term(scores[0], mask[0], 2)) / 2
                + term(scores[1], mask[1], 3)) / 2  # fmt: skip
    got = decoupled_softmax(_t(scores), positives=torch.tensor(mask))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # The plain softmax keeps the other positive in the denominator: a larger loss.
    coupled = -(_log_softmax(scores[0])[0] + _log_softmax(scores[0])[2]) / 2
    assert coupled > (term(scores[0], mask[0], 0) + term(scores[0], mask[0], 2)) / 2


def test_decoupled_softmax_with_one_positive_per_row_is_the_in_batch_loss() -> None:
    scores = _t([[1.0, 0.2, -0.5, 0.3], [0.1, 0.4, 2.0, -1.0]])
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 0] = mask[1, 2] = True  # groups of 2: each query's positive at b * 2
    expected = in_batch_nll(scores, group=2)
    assert decoupled_softmax(scores, positives=mask).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="at least one True"):
        decoupled_softmax(scores, positives=torch.zeros(2, 4, dtype=torch.bool))


def test_distillation_matches_hand_computation() -> None:
    got = ar2_distillation(_t(S), _t(R))
    assert got.item() == pytest.approx(_hand_kd(S, R), rel=1e-12)
    got_t = ar2_distillation(_t(S), _t(R), temperature=3.0)
    assert got_t.item() == pytest.approx(_hand_kd(S, R, t=3.0), rel=1e-12)


def test_distillation_large_temperature_gives_uniform_targets() -> None:
    uniform_ce = -sum(sum(_log_softmax(row)) / len(row) for row in S) / len(S)
    got = ar2_distillation(_t(S), _t(R), temperature=1e9)
    assert got.item() == pytest.approx(uniform_ce, rel=1e-8)
    assert got.item() != pytest.approx(ar2_distillation(_t(S), _t(R)).item(), rel=1e-3)


def test_adversarial_matches_hand_computation() -> None:
    assert ar2_adversarial(_t(S), _t(R)).item() == pytest.approx(_hand_adv_sum(S, R), rel=1e-12)


def test_reward_matches_hand_computation_and_is_log_half_for_positive() -> None:
    reward = adversarial_reward(_t(R))
    assert reward[:, 0].tolist() == pytest.approx([math.log(0.5)] * 2, rel=1e-12)
    expected = [[_log_sigmoid(row[0] - x) for x in row] for row in R]
    for got_row, want_row in zip(reward.tolist(), expected):
        assert got_row == pytest.approx(want_row, rel=1e-12)


def test_mean_per_query_is_sum_over_batch() -> None:
    total = ar2_adversarial(_t(S), _t(R), reduction="sum")
    per_query = ar2_adversarial(_t(S), _t(R), reduction="mean_per_query")
    assert per_query.item() == pytest.approx(total.item() / 2, rel=1e-12)


def test_adversarial_is_nonnegative_on_random_inputs() -> None:
    gen = torch.Generator().manual_seed(0)
    for batch, group in [(1, 2), (3, 4), (8, 16)]:
        for _ in range(5):
            s = torch.randn(batch, group, generator=gen) * 5
            r = torch.randn(batch, group, generator=gen) * 5
            assert ar2_adversarial(s, r).item() >= 0.0
            assert ar2_adversarial(s, r, reduction="mean_per_query").item() >= 0.0


def test_adversarial_step_raises_confusable_negative_most() -> None:
    # Negative 1 scores close to the positive (|reward| large); negative 2 far below (small).
    ranker = _t([[2.0, 1.9, -3.0]])
    assert abs(_log_sigmoid(0.1)) > 50 * abs(_log_sigmoid(5.0))
    scores = _t([[0.0, 0.0, 0.0]], grad=True)
    before = _softmax([0.0, 0.0, 0.0])
    opt = torch.optim.SGD([scores], lr=0.1)
    opt.zero_grad()
    ar2_adversarial(scores, ranker).backward()
    opt.step()
    after = torch.softmax(scores.detach(), dim=-1)[0].tolist()
    gain_confusable, gain_easy = after[1] - before[1], after[2] - before[2]
    assert gain_confusable > gain_easy
    assert gain_confusable > 0.0


@pytest.mark.parametrize(
    "loss",
    [
        ar2_distillation,
        ar2_adversarial,
        lambda s, r: ar2_retriever_loss(retriever_scores=s, ranker_scores=r, adv_lambda=0.3),
        lambda s, r: ar2_shard_loss(s, r, AR2Config(), in_batch_scores=torch.cat([s, s], dim=1)),
    ],
)
def test_no_gradient_flows_into_ranker(loss: Callable[..., Tensor]) -> None:
    s, r = _t(S, grad=True), _t(R, grad=True)
    loss(s, r).backward()
    assert r.grad is None or torch.all(r.grad == 0)
    assert s.grad is not None and torch.any(s.grad != 0)


def test_lambda_extremes_are_exactly_kd_and_adv() -> None:
    s, r = _t(S), _t(R)
    pair = {"retriever_scores": s, "ranker_scores": r}
    assert torch.equal(ar2_retriever_loss(**pair, adv_lambda=0.0), ar2_distillation(s, r))
    assert torch.equal(ar2_retriever_loss(**pair, adv_lambda=1.0), ar2_adversarial(s, r))
    assert torch.equal(
        ar2_retriever_loss(**pair, adv_lambda=1.0, reduction="mean_per_query"),
        ar2_adversarial(s, r, reduction="mean_per_query"),
    )


def test_retriever_loss_matches_hand_computation() -> None:
    lam = 0.5
    expected = lam * _hand_adv_sum(S, R) + (1 - lam) * _hand_kd(S, R)
    pair = {"retriever_scores": _t(S), "ranker_scores": _t(R)}
    assert ar2_retriever_loss(**pair).item() == pytest.approx(expected, rel=1e-12)
    expected_mean = lam * _hand_adv_sum(S, R) / 2 + (1 - lam) * _hand_kd(S, R, t=2.0)
    got = ar2_retriever_loss(**pair, reduction="mean_per_query", temperature=2.0)
    assert got.item() == pytest.approx(expected_mean, rel=1e-12)


def test_retriever_loss_in_batch_term() -> None:
    # (B, B * M) = (2, 6): query 0's positive is column 0, query 1's is column 3.
    in_batch = [S[0] + [0.3, -0.2, 0.1], [0.4, 0.0, 1.0] + S[1]]
    extra = -(_log_softmax(in_batch[0])[0] + _log_softmax(in_batch[1])[3]) / 2
    expected = 0.5 * _hand_adv_sum(S, R) + 0.5 * _hand_kd(S, R) + extra
    got = ar2_shard_loss(_t(S), _t(R), AR2Config(), in_batch_scores=_t(in_batch))
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_the_in_batch_term_leaves_a_querys_other_positives_out_of_its_softmax() -> None:
    # Query 1's drawn positive (column 3) is also relevant to query 0: not its negative.
    in_batch = [S[0] + [0.3, -0.2, 0.1], [0.4, 0.0, 1.0] + S[1]]
    exclude = torch.zeros(2, 6, dtype=torch.bool)
    exclude[0, 3] = True
    kept = [x for j, x in enumerate(in_batch[0]) if j != 3]
    extra = -(_log_softmax(kept)[0] + _log_softmax(in_batch[1])[3]) / 2
    expected = 0.5 * _hand_adv_sum(S, R) + 0.5 * _hand_kd(S, R) + extra
    scores = _t(in_batch).requires_grad_()
    got = ar2_shard_loss(_t(S), _t(R), AR2Config(), in_batch_scores=scores,
                         in_batch_exclude=exclude)  # fmt: skip
    assert got.item() == pytest.approx(expected, rel=1e-12)
    got.backward()
    assert scores.grad is not None and scores.grad[0, 3] == 0  # no push on a relevant passage
    plain = ar2_shard_loss(_t(S), _t(R), AR2Config(), in_batch_scores=_t(in_batch))
    assert plain.item() > got.item()  # counted as a negative, it only adds to the loss
    with pytest.raises(ValueError, match="leave each query's own positive in"):
        in_batch_nll(_t(in_batch), group=3, exclude=torch.eye(2, 6, dtype=torch.bool))


@pytest.mark.parametrize(
    "call",
    [
        lambda: listwise_ce(torch.zeros(3)),  # not 2-D
        lambda: listwise_ce(torch.zeros(2, 1)),  # no negative
        lambda: listwise_ce(torch.zeros(0, 3)),  # no query
        lambda: ar2_distillation(torch.zeros(2, 3), torch.zeros(2, 4)),  # shapes differ
        lambda: ar2_distillation(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0),
        lambda: ar2_adversarial(torch.zeros(2, 3), torch.zeros(3, 3)),
        lambda: ar2_adversarial(torch.zeros(2, 1), torch.zeros(2, 1)),
        lambda: ar2_retriever_loss(
            retriever_scores=torch.zeros(2, 3), ranker_scores=torch.zeros(2, 3), adv_lambda=1.5
        ),
        lambda: ar2_shard_loss(
            torch.zeros(2, 3), torch.zeros(2, 3), AR2Config(), in_batch_scores=torch.zeros(2, 5)
        ),
        lambda: in_batch_contrastive(torch.zeros(2, 4), torch.zeros(3, 4)),  # 3 rows, 2 queries
        lambda: in_batch_contrastive(torch.zeros(2, 4), torch.zeros(4, 3)),  # dims differ
        lambda: in_batch_contrastive(torch.zeros(2, 4), torch.zeros(1, 4)),  # fewer docs
        lambda: in_batch_contrastive(torch.zeros(2, 4), torch.zeros(4, 4), temperature=-1.0),
    ],
)
def test_invalid_inputs_raise_value_error(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        call()


def test_unknown_reduction_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="mean_per_query.*sum|sum.*mean_per_query"):
        ar2_adversarial(torch.zeros(2, 3), torch.zeros(2, 3), reduction="mean")
    with pytest.raises(ValueError, match="choose one of"):
        ar2_retriever_loss(
            retriever_scores=torch.zeros(2, 3), ranker_scores=torch.zeros(2, 3), reduction="avg"
        )


# --- the seed's distillation losses (issue 14) -------------------------------------------


def _minmax(row: list[float]) -> list[float]:
    low, high = min(row), max(row)
    return [0.0] * len(row) if high == low else [(x - low) / (high - low) for x in row]


def test_margin_mse_is_the_mean_squared_difference_of_margins() -> None:
    from ar2.losses import margin_mse

    terms = [((s[0] - s[j]) - (r[0] - r[j]) / 2.0) ** 2 for s, r in zip(S, R) for j in range(1, 3)]
    got = margin_mse(torch.tensor(S), torch.tensor(R), temperature=2.0)
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_margin_mse_is_zero_for_a_shifted_teacher_and_ignores_common_shifts() -> None:
    from ar2.losses import margin_mse

    s = torch.tensor(S)
    assert margin_mse(s, s + 3.0).item() == pytest.approx(0.0, abs=1e-7)
    assert margin_mse(s, torch.tensor(R)).item() > 0.1


def test_normalised_kl_is_the_kl_of_min_max_normalised_softmaxes() -> None:
    from ar2.losses import normalised_kl

    t = 0.25
    expected = 0.0
    for s, r in zip(S, R):
        q = _softmax([x / t for x in _minmax(r)])
        log_p = _log_softmax([x / t for x in _minmax(s)])
        expected += sum(qj * (math.log(qj) - lp) for qj, lp in zip(q, log_p))
    got = normalised_kl(torch.tensor(S), torch.tensor(R), temperature=t)
    assert got.item() == pytest.approx(expected / len(S), rel=1e-5)


def test_normalised_kl_ignores_the_scale_of_either_side() -> None:
    from ar2.losses import normalised_kl

    s, r = torch.tensor(S), torch.tensor(R)
    base = normalised_kl(s, r, temperature=0.2).item()
    assert normalised_kl(20 * s - 4, r / 7 + 1, temperature=0.2).item() == pytest.approx(base)
    assert normalised_kl(r, r).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("kd", ["ce", "margin_mse", "nway_kl"])
def test_the_retriever_loss_uses_the_named_kd_term_and_no_gradient_reaches_the_teacher(
    kd: str,
) -> None:
    from ar2.losses import KD_LOSSES

    s = torch.tensor(S, requires_grad=True)
    r = torch.tensor(R, requires_grad=True)
    loss = ar2_retriever_loss(retriever_scores=s, ranker_scores=r, adv_lambda=0.0, kd=kd)
    assert loss.item() == pytest.approx(KD_LOSSES[kd](torch.tensor(S), torch.tensor(R)).item())
    loss.backward()
    assert r.grad is None and s.grad is not None and s.grad.abs().sum() > 0


def test_an_unknown_kd_loss_names_the_choices() -> None:
    with pytest.raises(ValueError, match="margin_mse"):
        ar2_retriever_loss(retriever_scores=torch.tensor(S), ranker_scores=torch.tensor(R), kd="l2")
