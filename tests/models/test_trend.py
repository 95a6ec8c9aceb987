"""The trend-aware ranker: per-event state equals a recount, the score equals its
documented formula, parameters are chosen on validation, and new events move the ranking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import models.trend.tuning as tuning
from models import make_model
from models.base import InteractionGraph
from models.trend import TrendParams, TrendRanker, TrendState, covis_scores, trend_scores
from models.trend.scoring import COVIS_EPS, DAY
from models.trend.serving import TrendTopK
from models.trend.tuning import validation_steps
from tests.models.trend_checks import assert_served_equals_exact


def random_stream(n: int = 400, users: int = 25, items: int = 15, seed: int = 0
                  ) -> InteractionGraph:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.uniform(0, 30 * DAY, n))
    return InteractionGraph.from_arrays(rng.integers(0, users, n), rng.integers(0, items, n),
                                        ts, num_users=users, num_items=items)


@pytest.mark.parametrize("batch", [1, 7, 400])
def test_per_event_updates_equal_a_recount(batch: int) -> None:
    g = random_stream()
    half_lives = (0.5 * DAY, 3 * DAY)
    whole = TrendState.from_graph(g, half_lives, window=3, n_recent=4)
    live = TrendState(g.num_items, half_lives, window=3, n_recent=4)
    for lo in range(0, g.num_edges, batch):
        live.update(g.user[lo:lo + batch], g.item[lo:lo + batch], g.ts[lo:lo + batch])
    t = float(g.ts.max()) + DAY
    np.testing.assert_allclose(live.decayed(t), whole.decayed(t), rtol=1e-9)
    np.testing.assert_array_equal(live.counts, whole.counts)
    np.testing.assert_array_equal(live.transitions.toarray(), whole.transitions.toarray())
    for user in range(g.num_users):
        np.testing.assert_array_equal(live.recent_items(user), whole.recent_items(user))


def test_decayed_counts_follow_the_half_life_and_survive_long_gaps() -> None:
    s = TrendState(2, half_lives=(3600.0,))
    s.update([0], [0], [0.0])
    s.update([0], [1], [1000 * 86400.0])          # 24,000 half-lives later: rebased
    t = 1000 * 86400.0 + 7200.0
    np.testing.assert_allclose(s.decayed(t)[0], [0.0, 0.25], atol=1e-12)
    assert np.isfinite(s.sums).all()


def test_late_events_count_like_any_other() -> None:
    s = TrendState(2, half_lives=(DAY,))
    s.update([0, 1], [0, 1], [10 * DAY, 10 * DAY])
    s.update([2], [1], [9 * DAY])                  # a day late
    np.testing.assert_allclose(s.decayed(10 * DAY)[0], [1.0, 1.5])
    assert s.recent_items(2).tolist() == [1]


def test_score_equals_the_documented_formula_on_a_hand_built_case() -> None:
    # user 0: items 0 then 1; user 1: items 1 then 2; user 2 (scored) saw item 1 last
    g = InteractionGraph.from_arrays([0, 0, 1, 1, 2], [0, 1, 1, 2, 1],
                                     [0.0, DAY, DAY, 2 * DAY, 2 * DAY], num_items=4)
    state = TrendState.from_graph(g, (DAY,), window=1, n_recent=2)
    params = TrendParams(DAY, math.inf, long_weight=0.25, covis_weight=0.5, smoothing=0.1)
    t = 2 * DAY
    decayed = np.array([0.25, 0.5 + 0.5 + 1.0, 1.0, 0.0])  # item 1: two a day ago, one now
    counts = np.array([1.0, 3.0, 1.0, 0.0])
    trend = 0.75 * np.log(decayed + 0.1) + 0.25 * np.log(counts + 0.1)
    np.testing.assert_allclose(trend_scores(state, params, t), trend)
    # transitions with window 1: 0-1 (user 0) and 1-2 (user 1), both directions
    inv = 1 / np.sqrt(counts + 1)
    v = np.array([1.0, 0.0, 1.0, 0.0]) * inv[1] * inv     # from item 1, recency 0.7 ** 0
    covis = np.log(v / v.max() + COVIS_EPS)
    np.testing.assert_allclose(covis_scores(state, params, np.array([2]))[0], covis)
    np.testing.assert_allclose(covis_scores(state, params, np.array([3]))[0], 0.0)

    ranker = TrendRanker(window=1, n_recent=2)
    ranker.params_, ranker.state_, ranker._num_users = params, state, 4
    expected = trend + 0.5 * covis
    np.testing.assert_allclose(ranker.score(torch.tensor([2]), t=t)[0].numpy(), expected,
                               rtol=1e-6)
    np.testing.assert_allclose(ranker.score(torch.tensor([3]), t=t)[0].numpy(), trend,
                               rtol=1e-6)


def chains(n_users: int = 120, seed: int = 0) -> InteractionGraph:
    """Users walk one of three item chains (0-1-2-3, 4-5-6-7, 8-9-10-11) one step a day,
    starting at random days; item 12 is a hot item everyone sees in the last week."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        chain, start = rng.integers(0, 3), rng.uniform(0, 40 * DAY)
        for step in range(4):
            users.append(u)
            items.append(4 * chain + step)
            ts.append(start + step * DAY + rng.uniform(0, 3600))
        if rng.random() < 0.3:
            users.append(u)
            items.append(12)
            ts.append(rng.uniform(38 * DAY, 44 * DAY))
    return InteractionGraph.from_arrays(users, items, ts, num_items=13)


def test_fit_learns_the_transitions_and_ranks_the_next_chain_item() -> None:
    g = chains()
    ranker = TrendRanker(None, k=1, horizon_seconds=None, seed=0).fit(g)
    params = ranker.fitted_params()
    assert params.covis_weight > 0
    summary = ranker.fitted_summary()
    assert summary["fitted"]["covis_weight"] == params.covis_weight
    assert summary["validation"]["valid_recall_covis"] >= summary["validation"][
        "valid_recall_trend"]
    # a new user who just saw item 5 is sent down chain 1; a user without events gets the trend
    new = g.num_users
    ranker.update([new], [5], [float(g.ts.max())])
    top = set(ranker.recommend(torch.tensor([new]), k=2)[0][0].tolist())
    assert top - {12} and top - {12} <= {4, 6, 7}
    cold = ranker.score(torch.tensor([new + 1]))[0]
    assert int(cold.argmax()) == 12


def test_updates_move_the_ranking_without_a_refit() -> None:
    g = random_stream()
    ranker = TrendRanker(None).fit(g)
    t = float(g.ts.max())
    before = ranker.score(torch.tensor([0]))[0]
    ranker.update(np.arange(20), np.full(20, 14), np.full(20, t + 60))
    after = ranker.score(torch.tensor([1000]))[0]
    assert int(after.argmax()) == 14 and after[14] > before[14]


def test_choice_reads_only_the_validation_window() -> None:
    g = random_stream(600)
    cut = float(np.quantile(g.ts, 0.8))
    history = g.subset(g.ts < cut)
    a = TrendRanker(None).fit(history)
    # events after the history cannot change what fit chose on it
    b = TrendRanker(None).fit(history.subset(np.ones(history.num_edges, dtype=bool)))
    assert a.fitted_params() == b.fitted_params()


def test_the_validation_walk_ranks_each_step_with_every_earlier_event() -> None:
    g = random_stream(600)
    cut = float(np.quantile(g.ts, 0.8))
    train, valid = g.subset(g.ts < cut), g.subset(g.ts >= cut)
    state = TrendState.from_graph(train, (DAY,))
    steps = validation_steps(state, train, valid, half_lives=(DAY,), horizon=DAY)
    assert len(steps) > 3
    assert state.counts.sum() == train.num_edges          # the caller's state is untouched
    for step in steps:
        before = g.subset(g.ts < step.task.t + 1e-6)
        expected = np.log(np.bincount(before.item, minlength=g.num_items) + 0.1)
        np.testing.assert_allclose(step.log_counts[math.inf], expected)
    once = validation_steps(state, train, valid, half_lives=(DAY,), horizon=None)
    assert len(once) == 1 and once[0].task.t == float(train.ts.max())


def test_a_long_validation_window_is_walked_in_at_most_the_step_cap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    g = random_stream(600)  # events over 20 days: a 1-hour horizon would be ~100 steps
    cut = float(np.quantile(g.ts, 0.8))
    train, valid = g.subset(g.ts < cut), g.subset(g.ts >= cut)
    state = TrendState.from_graph(train, (DAY,))
    monkeypatch.setattr(tuning, "MAX_VALIDATION_STEPS", 3)
    hourly = validation_steps(state, train, valid, half_lives=(DAY,), horizon=3600.0)
    assert 1 < len(hourly) <= 3
    monkeypatch.setattr(tuning, "MAX_VALIDATION_STEPS", 10**6)  # uncapped: one an hour
    assert len(validation_steps(state, train, valid, half_lives=(DAY,), horizon=3600.0)) > 10


def test_embedding_term_uses_a_refitted_base() -> None:
    g = chains(60)
    kwargs = dict(embedding_dim=8, epochs=3, batch_size=64, progress=False, device="cpu")
    ranker = make_model("trend", base="lightgcn", base_kwargs=kwargs, seed=1).fit(g)
    assert ranker.user_embeddings().shape == (g.num_users, 8)
    assert ranker.hyper_parameters()["base"] == "lightgcn"
    assert "base_hyper_parameters" in ranker.fitted_summary()
    assert torch.isfinite(ranker.score(torch.arange(3))).all()


def test_state_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="half_lives"):
        TrendState(3, half_lives=(math.inf,))
    with pytest.raises(ValueError, match="differ in length"):
        TrendState(3, half_lives=(DAY,)).update([0], [0, 1], [0.0])
    with pytest.raises(RuntimeError, match="not fitted"):
        TrendRanker(None).score(torch.tensor([0]))


def test_state_round_trips_through_bytes() -> None:
    g = random_stream()
    state = TrendState.from_graph(g, (DAY, 7 * DAY), window=3, n_recent=4)
    again = TrendState.from_bytes(state.to_bytes())
    t = float(g.ts.max())
    np.testing.assert_array_equal(again.decayed(t), state.decayed(t))
    np.testing.assert_array_equal(again.transitions.toarray(), state.transitions.toarray())
    assert all(np.array_equal(again.recent_items(u), state.recent_items(u))
               for u in range(g.num_users))
    again.update([0], [1], [t + 1])          # and it keeps working
    assert again.counts.sum() == state.counts.sum() + 1


@pytest.mark.parametrize("covis_weight", [0.0, 0.3])
def test_candidate_top_k_equals_exact_scoring(covis_weight: float) -> None:
    g = random_stream(800, users=40, items=300, seed=2)
    state = TrendState.from_graph(g, (DAY,), window=3, n_recent=5)
    params = TrendParams(DAY, math.inf, 0.2, covis_weight)
    ranker = TrendRanker(window=3)
    ranker.params_, ranker.state_, ranker._num_users = params, state, g.num_users
    served = TrendTopK(state, params, trend_candidates=5)
    exact = ranker.score(torch.arange(g.num_users + 1)).double().numpy()  # last: no events
    assert_served_equals_exact(served, exact, g)


def test_a_base_without_warm_validation_users_is_fitted_without_early_stopping() -> None:
    # the newest tenth holds only new users: nothing to stop the base's training on (this
    # raised "no warm test user" from the base's validation recall)
    users = np.r_[np.repeat(np.arange(10), 9), np.arange(10, 20)]
    items = np.r_[np.tile(np.arange(9), 10), np.arange(10) % 9]
    g = InteractionGraph.from_arrays(users, items, np.arange(len(users), dtype=float) * 600)
    kwargs = dict(embedding_dim=4, epochs=2, progress=False, device="cpu")
    ranker = make_model("trend", base="lightgcn", base_kwargs=kwargs, seed=1).fit(g)
    assert ranker.early_base_.history_.valid == [] and ranker.base_epochs_ == 2
    assert torch.isfinite(ranker.score(torch.arange(3))).all()


def test_tuning_lets_a_strong_embedding_term_decide_the_ranking() -> None:
    # 40 items; each user's one validation item is the base's best unseen item, while the
    # trend favours other items with a spread the small embedding weights cannot overcome
    from models.trend.tuning import ValidationStep, ValidationTask, tune

    rng = np.random.default_rng(0)
    n_users, n_items = 30, 40
    history = InteractionGraph.from_arrays(np.arange(n_users), np.zeros(n_users, int),
                                           num_items=n_items)
    targets = rng.integers(1, n_items, n_users)
    valid = InteractionGraph.from_arrays(np.arange(n_users), targets, np.ones(n_users),
                                         num_items=n_items)
    task = ValidationTask(history, valid, k=5)
    z = rng.normal(size=(n_users, n_items))
    z[np.arange(n_users), targets] = 3.0
    trend = np.linspace(6.0, -2.0, n_items)
    step = ValidationStep(task, {DAY: trend, 30 * DAY: trend, math.inf: trend},
                          np.zeros((n_users, n_items)), z[task.users])
    params, report = tune([step], short_half_lives=[DAY], long_half_lives=[30 * DAY],
                          long_weights=[0.0])
    assert params.embedding_weight >= 3.2
    assert report["valid_recall_embedding"] == 1.0 > report["valid_recall_trend"]


def test_the_validation_walk_bounds_its_score_matrices_in_total(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    g = random_stream(30_000, users=400, items=2000, seed=3)  # ~300 users a day
    cut = float(np.quantile(g.ts, 0.7))
    train, valid = g.subset(g.ts < cut), g.subset(g.ts >= cut)
    state = TrendState.from_graph(train, (DAY,))

    def users_per_step() -> list[int]:
        steps = validation_steps(state, train, valid, half_lives=(DAY,), horizon=DAY)
        return [len(step.task.users) for step in steps]

    free = users_per_step()
    assert max(free) > 250 and len(free) >= 9
    monkeypatch.setattr(tuning, "MAX_WALK_SCORES", 250 * 2000 * len(free))
    capped = users_per_step()
    assert max(capped) == 250 and len(capped) == len(free)
