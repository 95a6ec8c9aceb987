"""Window-by-window evaluation with hand-computed windows."""

import numpy as np
import pytest
import torch

from evaluation.streaming import (
    PopularityApproach,
    RetrainApproach,
    StaleApproach,
    evaluate_streaming,
)
from models.base import InteractionGraph, Recommender

# before t=100: u0 {0}, u1 {0, 1, 3}         window [100, 200): u0 {1}, u2 {2} (cold)
#                                            window [200, 300]: u0 {2}, u1 {2}
EVENTS = [(0, 0, 10), (1, 0, 20), (1, 1, 30), (1, 3, 40), (0, 1, 110), (2, 2, 120),
          (0, 2, 210), (1, 2, 220), (1, 2, 300)]


@pytest.fixture
def graph():
    u, i, t = zip(*EVENTS, strict=True)
    return InteractionGraph.from_arrays(u, i, t, num_users=3, num_items=4)


class Counting(Recommender):
    """Popularity as embeddings; counts its fits and remembers the last history."""

    def __init__(self):
        self.fits = 0

    def fit(self, graph, valid=None):
        self.fits += 1
        self.seen_until = float(graph.ts.max())
        self.counts = torch.from_numpy(np.bincount(graph.item, minlength=graph.num_items))
        self.num_users = graph.num_users
        return self

    def user_embeddings(self):
        return torch.ones(self.num_users, 1)

    def item_embeddings(self):
        return self.counts.float().view(-1, 1)


def test_popularity_refreshed_by_hand(graph):
    out = evaluate_streaming(graph, {"pop": PopularityApproach()}, start=100.0,
                             window_seconds=100.0, k=1)
    w1, w2 = out["windows"]
    # w1: counts [2, 1, 0, 1]; u0 (seen 0) -> item 1 (tie with 3), a hit; u2 -> item 0, a miss
    assert (w1["n_users"], w1["n_events"]) == (2, 2)
    assert w1["results"]["pop"]["recall@1"] == 0.5
    # w2: counts [2, 2, 1, 1]; u0 (seen 0, 1) -> 2 (tie with 3), u1 (seen 0, 1, 3) -> 2: hits
    assert w2["results"]["pop"]["recall@1"] == 1.0
    assert w2["n_events"] == 3  # the last window includes the final event at t=300
    summary = out["summary"]["pop"]
    assert summary["recall@1"] == pytest.approx(3 / 4)  # pooled over (window, user) pairs
    assert summary["compute_seconds"] == pytest.approx(
        summary["prepare_seconds"] + summary["score_seconds"])
    assert out["n_windows"] == 2 and out["start_iso"] == "1970-01-01T00:01:40Z"


def test_stale_fits_once_and_retrain_every_window(graph):
    stale, fresh = Counting(), []

    def make():
        fresh.append(Counting())
        return fresh[-1]

    out = evaluate_streaming(graph, {"stale": StaleApproach(stale), "retrain":
                                     RetrainApproach(make)}, start=100.0,
                             window_seconds=100.0, k=1)
    assert stale.fits == 1 and stale.seen_until == 40.0  # fitted at t2 only
    assert len(fresh) == 2 and fresh[-1].seen_until == 120.0
    # stale counts [2, 1, 0, 1] send u0 to item 3 in window 2; refreshed ones to item 2
    assert out["windows"][1]["results"]["stale"]["recall@1"] == 0.5
    assert out["windows"][1]["results"]["retrain"]["recall@1"] == 1.0


def test_prefitted_stale_model_and_unknown_users_fall_back(graph):
    model = Counting().fit(graph.before(100.0))
    approach = StaleApproach(model, trained_on=graph.before(100.0))
    approach.prepare(graph.before(200.0), 200.0)
    assert model.fits == 1
    # the unknown user gets recommend's fallback recounted on everything before t=200
    # (the service recounts it live): [2, 2, 1, 1], not the base's training counts
    assert approach.score(torch.tensor([2])).tolist() == [[2.0, 2.0, 1.0, 1.0]]


def test_windows_without_users_are_skipped_and_max_windows_truncates(graph):
    out = evaluate_streaming(graph, {"pop": PopularityApproach()}, start=100.0,
                             window_seconds=50.0, k=2, max_windows=3)
    assert out["n_windows"] == 3 and out["total_windows"] == 4
    assert [w["n_users"] for w in out["windows"]] == [2, 0, 2]
    assert out["windows"][1]["results"] == {}


def test_bad_arguments_fail_fast(graph):
    with pytest.raises(ValueError, match="at least one approach"):
        evaluate_streaming(graph, {}, start=100.0)
    with pytest.raises(TypeError, match="lacks prepare"):
        evaluate_streaming(graph, {"x": object()}, start=100.0)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="window_seconds"):
        evaluate_streaming(graph, {"pop": PopularityApproach()}, start=100.0, window_seconds=0)
    with pytest.raises(RuntimeError, match="before prepare"):
        PopularityApproach().score(torch.tensor([0]))


def test_a_long_test_period_gets_at_most_30_windows_and_says_so():
    from evaluation.runner import run_evaluation

    rng = np.random.default_rng(1)
    n = 2000  # 8000 days of events: the test tenth spans ~800 days
    ts = np.sort(rng.uniform(0, 8000 * 86_400.0, n))
    graph = InteractionGraph.from_arrays(rng.integers(0, 50, n), rng.integers(0, 40, n), ts)
    out = run_evaluation(graph, [], ks=(5,), n_bootstrap=5, progress=False)
    st = out["streaming"]
    assert st["n_windows"] == st["total_windows"] <= 30
    assert st["window_seconds"] % 86_400.0 == 0 and st["window_seconds"] > 86_400.0
    assert "windows (at most 30) span the test period" in st["window_policy"]
    assert st["retrain"].startswith("off")
    assert st["best_baseline"] in {"pop-alltime (refreshed)", "pop-recent (refreshed)",
                                   "pop-decayed (refreshed)"}
    assert st["summary"][st["best_baseline"]]["ratio_to_best_baseline"] == 1.0


class Stateful(Counting):
    """Counts kept fresh per event by ``update``, scored by its own ``score``."""

    def update(self, users, items, ts):
        self.counts = self.counts + torch.from_numpy(
            np.bincount(items, minlength=len(self.counts)))

    def score(self, users):
        return self.counts.float().expand(len(users), -1)


def test_a_model_with_per_event_state_streams_through_its_own_update(graph):
    from evaluation.incremental import StatefulApproach

    model = Stateful().fit(graph.before(100.0))
    fresh = StatefulApproach(model, trained_on=graph.before(100.0))
    out = evaluate_streaming(graph, {"stale": StaleApproach(model, trained_on=graph.before(
        100.0)), "fresh": fresh}, start=100.0, window_seconds=100.0, k=1)
    # as the refreshed counts above: window 2 sends u0 to item 2 (a hit), the stale base to 3
    assert out["windows"][1]["results"]["fresh"]["recall@1"] == 1.0
    assert out["windows"][1]["results"]["stale"]["recall@1"] == 0.5
    assert model.counts.tolist() == [2, 1, 0, 1]  # the stale base was not touched
