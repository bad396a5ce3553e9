"""TAS-Balanced's samplers (ar2.train.tas): topic batches, margin-balanced negatives, the
teacher's scores reused as the step's target, and the recipe's run killed and resumed."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from ar2 import config
from ar2.data.training import TrainingGroup
from ar2.train.tas import balanced_negatives, topic_picks
from ar2.types import Doc, Query


def test_balanced_negatives_draw_each_non_empty_margin_bin_alike() -> None:
    # 8 hard negatives (margins near 0) and 2 easy ones (near 10): two bins of width 5.
    margins = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 9.8, 10.0]
    draws = [balanced_negatives(margins, 1, random.Random(s), bins=2)[0] for s in range(2000)]
    easy = sum(d >= 8 for d in draws) / len(draws)
    assert easy == pytest.approx(0.5, abs=0.04)  # uniform sampling would give 0.2
    with_ten_bins = [balanced_negatives(margins, 1, random.Random(s), bins=10)[0]
                     for s in range(2000)]  # fmt: skip
    # bins of width 1: the hard ones fill bins 0 and 1, the easy ones bin 9: a third each
    assert sum(d >= 8 for d in with_ten_bins) / 2000 == pytest.approx(1 / 3, abs=0.04)


def test_balanced_negatives_are_distinct_until_the_pool_runs_out() -> None:
    rng = random.Random(0)
    assert sorted(balanced_negatives([0.0, 1.0, 2.0, 3.0], 4, rng, bins=2)) == [0, 1, 2, 3]
    five = balanced_negatives([0.0, 5.0], 5, rng, bins=10)  # two passes and one more draw
    assert sorted(five[:4]) == [0, 0, 1, 1] and five[4] in (0, 1)
    flat = balanced_negatives([1.0, 1.0, 1.0], 2, rng, bins=10)  # one bin: no width
    assert len(flat) == len(set(flat)) == 2 and set(flat) <= {0, 1, 2}
    assert balanced_negatives([], 3, rng, bins=10) == []


def test_topic_batches_come_from_one_topic_while_it_lasts() -> None:
    topics = [list(range(0, 10)), list(range(10, 13)), list(range(13, 30))]
    for step in range(20):
        picks = topic_picks(topics, 8, seed=1, stage="s", step=step)
        assert len(picks) == len(set(picks)) == 8
        first = next(t for t in topics if picks[0] in t)
        if len(first) >= 8:
            assert set(picks) <= set(first)  # a topic that can fill the batch fills it alone
        else:  # the small topic whole, then another's
            assert set(first) <= set(picks)
    assert topic_picks(topics, 8, 1, "s", 3) == topic_picks(topics, 8, 1, "s", 3)
    more = topic_picks([[0, 1], [2]], 5, 1, "s", 0)  # batch > queries: all, then reuse
    assert len(more) == 5 and set(more[:3]) == {0, 1, 2}


class _Teacher:
    """Scores a (query, document) pair from a table; records the pairs it scored."""

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table, self.scored = table, 0

    def batch_scores(self, batch: Any, cfg: Any) -> Any:
        import torch

        m = batch.group_size
        rows = [[self.table[(q.id, d.id)] for d in batch.docs[i * m : (i + 1) * m]]
                for i, q in enumerate(batch.queries)]  # fmt: skip
        self.scored += len(batch.docs)
        return torch.tensor(rows)


def test_the_balanced_draw_returns_the_teachers_scores_of_the_groups_it_drew() -> None:
    pytest.importorskip("torch")
    from ar2.train.tas import draw

    docs = {f"d{i}": Doc(f"d{i}", f"text {i}") for i in range(12)}
    groups = [TrainingGroup(Query(f"q{k}", f"query {k}"), (f"d{k}",),
                            tuple(f"d{j}" for j in range(4, 12))) for k in range(4)]  # fmt: skip
    table = {(f"q{k}", f"d{j}"): float(10 - j + k) for k in range(4) for j in range(12)}
    raw = {"retriever": {"batch_size": 2, "n_neg": 3},
           "sampling": {"balanced_margins": True, "pool": 6, "bins": 3}}  # fmt: skip
    cfg = config.load_ar2_config(raw)
    teacher = _Teacher(table)
    batch, target = draw(groups, docs, cfg, "round-1-retriever", 5, None, teacher)  # type: ignore[arg-type]
    assert teacher.scored == 2 * (1 + 6)  # each query's positive and pool, once
    assert target.shape == (2, 4) and batch.group_size == 4
    for b, query in enumerate(batch.queries):
        group = [d.id for d in batch.docs[b * 4 : (b + 1) * 4]]
        assert group[0] == "d" + query.id[1:]
        assert set(group[1:]) <= {f"d{j}" for j in range(4, 10)}  # the first 6 of the pool
        assert len(set(group[1:])) == 3
        assert target[b].tolist() == [table[(query.id, d)] for d in group]
    again = draw(groups, docs, cfg, "round-1-retriever", 5, None, _Teacher(table))  # type: ignore[arg-type]
    assert again[0] == batch


@pytest.mark.integration
def test_the_tas_recipe_writes_its_topics_and_resumes_after_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    from ar2.train import tas
    from ar2.train.ar2 import run_ar2
    from conftest import assert_same_round_retriever, recipe_toy

    data, cfg = recipe_toy(tmp_path, "tas-b", sampling={"topics": 3, "pool": 5})
    straight = tmp_path / "straight"
    run_ar2(data, straight, cfg)
    record = json.loads((straight / "mined" / "topics-round-1.json").read_text())
    assert record["kind"] == "tas_topics" and 1 <= len(record["topics"]) <= 3
    assert sorted(i for t in record["topics"] for i in t) == list(range(len(record["queries"])))
    real, calls = tas.balanced_negatives, iter(range(100))

    def killed(*args: Any, **kwargs: Any) -> Any:  # killed in step 3 of 4 (checkpoint at 2)
        if next(calls) == 2 * cfg.retriever.batch_size:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tas, "balanced_negatives", killed)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_ar2(data, out, cfg)
    monkeypatch.undo()
    run_ar2(data, out, cfg, resume=True)
    assert_same_round_retriever(out, straight)


def test_balanced_margins_without_a_teacher_are_refused_when_the_config_loads() -> None:
    from ar2.errors import Ar2Error

    raw = {"retriever_loss": "contrastive", "sampling": {"balanced_margins": True}}
    with pytest.raises((Ar2Error, ValueError), match="balanced_margins needs the teacher"):
        config.load_ar2_config(raw)
    small = {"retriever": {"n_neg": 7}, "sampling": {"balanced_margins": True, "pool": 4}}
    with pytest.raises((Ar2Error, ValueError), match="pool = 4 is smaller than retriever.n_neg"):
        config.load_ar2_config(small)


def test_the_in_batch_term_leaves_out_a_querys_positives_drawn_for_another_query() -> None:
    """SciFact's claims share cited abstracts (538 of its 809 training queries have a positive
    another query has too), and a topic batch gathers such queries: the in-batch term must not
    push a query away from its own relevant passage drawn for a neighbour."""
    pytest.importorskip("torch")
    from ar2.train.steps import Batch, relevant_passages

    docs = [Doc(i, i) for i in ("p1", "n1", "p2", "p1b")]  # groups of 2: (p1, n1), (p2, p1b)
    batch = Batch([Query("a", "a"), Query("b", "b")], docs, 0,
                  (frozenset({"p1", "p2"}), frozenset({"p2"})),
                  tuple(d.id for d in docs))  # fmt: skip
    others = relevant_passages(batch, "cpu", own=False).tolist()
    assert others == [[False, False, True, False], [False, False, False, False]]
    every = relevant_passages(batch, "cpu").tolist()  # DEXML's positives: its own too
    assert every == [[True, False, True, False], [False, False, True, False]]


def test_the_ar2_step_masks_the_shared_positive_only_where_asked(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    from ar2 import losses
    from ar2.encoders import BiEncoder
    from ar2.train import steps
    from ar2.train.recipes import apply
    from ar2.train.steps import Batch

    docs = [Doc(i, f"{i} cats fish") for i in ("p1", "n1", "p2", "n2")]
    batch = Batch([Query("a", "cats"), Query("b", "fish")], docs, 0,
                  (frozenset({"p1", "p2"}), frozenset({"p2"})),
                  tuple(d.id for d in docs))  # fmt: skip
    encoder = BiEncoder.load(tiny_bert, precision="fp32")
    seen = []
    real = losses.in_batch_nll

    def spy(scores: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("exclude"))
        return real(scores, **kwargs)

    monkeypatch.setattr(losses, "in_batch_nll", spy)
    target = torch.zeros(2, 2)  # (B, M): the teacher's scores, given
    for masked in (False, True):
        cfg = config.AR2Config(in_batch=True, in_batch_masks_positives=masked)
        steps.ar2_retriever_step_loss(encoder, None, batch, cfg, target)  # type: ignore[arg-type]
    assert seen[0] is None  # DPR's softmax: p2 is one of a's negatives
    assert seen[1].tolist() == [[False, False, True, False], [False] * 4]
    assert apply("tas-b", {})["in_batch_masks_positives"] is True
