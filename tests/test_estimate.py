"""Checks of ar2.train.estimate: the work counted per stage and the time said at start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ar2.config import AR2Config, StageConfig
from ar2.train.estimate import Lengths, Work, estimate, plan


class _Counts:
    def __init__(self, corpus: int, train: int, dev: int, test: int) -> None:
        self.corpus, self.train = [None] * corpus, [None] * train
        self.dev, self.test = [None] * dev, [None] * test


def test_each_stage_is_counted_by_hand() -> None:
    cfg = AR2Config(
        rounds=1, rerank_k=4, train_doc_max_length=100,
        g0=StageConfig(steps=10, batch_size=2, n_neg=1),
        d0=StageConfig(steps=3, batch_size=1, n_neg=2),
        ranker=StageConfig(steps=2, batch_size=1, n_neg=1),
        retriever=StageConfig(steps=5, batch_size=2, n_neg=3),
    )  # fmt: skip
    lengths = Lengths(query=10, doc_train=100, doc_index=200)
    work = plan(cfg, _Counts(corpus=50, train=8, dev=3, test=6), lengths)
    assert work["g0-train"] == Work(train=10 * 2 * (10 + 2 * 100))
    assert work["dev-g-0"] == work["dev-g-1"] == Work(infer=50 * 200 + (8 + 3) * 10)
    assert work["d0-train"] == Work(train=3 * 1 * 3 * 110)
    assert work["dev-gd-0"] == Work(infer=3 * 4 * 210)
    assert work["round-1-ranker"] == Work(train=2 * 1 * 2 * 110)
    assert work["round-1-retriever"] == Work(train=5 * 2 * (10 + 4 * 100), infer=5 * 2 * 4 * 110)
    assert work["final"] == Work(infer=50 * 200 + 6 * (10 + 4 * 210))
    assert Work(train=2, infer=3).seconds((0.5, 1.0)) == 4.0


def test_skipped_stages_are_not_planned() -> None:
    cfg = AR2Config(
        rounds=2, skip_d0=True, ranker=StageConfig(steps=0), retriever_loss="contrastive"
    )
    work = plan(cfg, _Counts(10, 5, 2, 0), Lengths(5, 20, 30))
    assert "d0-train" not in work and not any(k.endswith("-ranker") for k in work)
    assert work["round-2-retriever"].infer == 0  # the contrastive control has no teacher


def test_a_recipes_last_stage_and_its_follow_up_are_counted_by_hand() -> None:
    from ar2.config import RepCONCConfig, SparseConfig
    from ar2.train.estimate import FOLLOW_UP_WORK
    from ar2.train.follow_up import FOLLOW_UPS

    assert set(FOLLOW_UP_WORK) == set(FOLLOW_UPS)  # every follow-up has its count
    counts, lengths = _Counts(50, 8, 3, 6), Lengths(10, 100, 200, mlm_head=2.0)
    rank = Work(infer=3 * 50 * 210)  # rerank_k 50 of the 3 dev queries
    adore = plan(AR2Config(recipe="adore", adore=StageConfig(steps=7, batch_size=4)), counts,
                 lengths)  # fmt: skip
    assert adore["adore-train"] == Work(train=7 * 4 * 10)  # the query tower alone
    assert adore["dev-adore"] == Work(infer=3 * 10) and adore["dev-gd-adore"] == rank
    plain = plan(AR2Config(), counts, lengths)
    assert not {"adore-train", "sparse", "repconc"} & set(plain)
    # The commands' defaults, written out: sparse 200 steps x 8 queries x (1 + 3) documents;
    # RepCONC's constrained stage 60 x 16 x (1 + 3), JPQ's stage 200 x 32 queries.
    s, c = SparseConfig().stage, RepCONCConfig().constrained
    assert (s.steps, s.batch_size, s.n_neg, c.steps, c.batch_size, c.n_neg) == (
        200, 8, 3, 60, 16, 3)  # fmt: skip
    assert RepCONCConfig().stage.steps_for(8) == 200 and RepCONCConfig().stage.batch_size == 32
    sparse = plan(AR2Config(recipe="sparse"), counts, lengths)["sparse"]
    # each document cut at the index's 200 tokens, through the encoder and its head (x 2)
    assert sparse == Work(train=2.0 * 200 * 8 * 4 * 200, infer=2.0 * 50 * 200)
    repconc = plan(AR2Config(recipe="repconc"), counts, lengths)["repconc"]
    towers = 2 * 200 * 32 * 10  # JPQ's arm and RepCONC's second stage: queries alone
    assert repconc == Work(train=60 * 16 * (10 + 4 * 100) + towers, infer=50 * 200)


def test_the_estimate_is_priced_here_and_said(
    tiny_bert: Path, toy_beir: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from ar2.train.data import load_train_data

    cfg = AR2Config(retriever_model=str(tiny_bert), rounds=1, dev_queries=1, doc_max_length=64)
    data = load_train_data(toy_beir, cfg.dev_queries, cfg.seed, tmp_path, cfg.dev_fraction)
    with caplog.at_level(logging.INFO, logger="ar2.train"):
        seconds = estimate(cfg, data, done={"g0-train"})
    assert "g0-train" not in seconds and set(seconds) >= {"d0-train", "final"}
    assert all(s > 0 for s in seconds.values())
    said = [r.getMessage() for r in caplog.records if "estimated" in r.getMessage()]
    assert len(said) == 1 and f"{sum(seconds.values()) / 60:.1f} min" in said[0]


def test_a_data_parallel_estimate_splits_all_but_the_stages_rank_0_runs_alone(
    tiny_bert: Path, toy_beir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    from ar2 import distributed
    from ar2.train import estimate as module
    from ar2.train.data import load_train_data

    monkeypatch.setattr(module, "_price", lambda *args: (1e-6, 1e-7))  # fixed, not timed
    cfg = AR2Config(retriever_model=str(tiny_bert), rounds=1, dev_queries=1, doc_max_length=64,
                    recipe="sparse")  # fmt: skip
    data = load_train_data(toy_beir, cfg.dev_queries, cfg.seed, tmp_path, cfg.dev_fraction)
    one = estimate(cfg, data, done=set())
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=0, size=2))
    two = estimate(cfg, data, done=set())
    assert {"sparse", "final", "g0-train"} <= set(one) == set(two)
    for stage, seconds in one.items():
        alone = stage in ("final", "sparse")  # the report and the follow-up: rank 0's
        assert two[stage] == pytest.approx(seconds if alone else seconds / 2), stage
