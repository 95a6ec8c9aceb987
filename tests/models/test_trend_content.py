"""Item content in the trend ranker: tags and release years, users' affinities kept per
event, the weights chosen on validation, and served rankings equal to exact scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.base import InteractionGraph
from models.trend import TrendParams, TrendRanker, TrendState
from models.trend.affinity import ContentAffinity
from models.trend.content import MAX_TAGS, UNKNOWN_AGE, ItemContent
from models.trend.scoring import DAY
from models.trend.serving import TrendTopK
from tests.models.trend_checks import assert_served_equals_exact

YEAR = 365.2425 * DAY


def genre_stream(n: int = 3000, users: int = 60, items: int = 40, seed: int = 0
                 ) -> tuple[InteractionGraph, ItemContent]:
    """Users keep to one of two genres (each item has one), on top of a popularity trend."""
    rng = np.random.default_rng(seed)
    genre_of_item = np.arange(items) % 2
    genre_of_user = rng.integers(0, 2, users)
    user = rng.integers(0, users, n)
    pop = rng.zipf(1.6, n) % (items // 2)
    item = 2 * pop + np.where(rng.random(n) < 0.9, genre_of_user[user], 1 - genre_of_user[user])
    ts = np.sort(rng.uniform(40 * YEAR, 40 * YEAR + 60 * DAY, n))
    content = ItemContent([["A"] if g == 0 else ["B"] for g in genre_of_item],
                          [2000 + i % 10 for i in range(items)])
    return InteractionGraph.from_arrays(user, item, ts, num_users=users, num_items=items), content


def test_tags_are_normalised_per_item_and_the_vocabulary_capped() -> None:
    c = ItemContent([["x", "y", "x"], [], ["y"]], [None, 1990, 2020])
    assert c.vocabulary == ("x", "y")
    np.testing.assert_allclose(c.tag_weights.toarray(), [[0.5, 0.5], [0, 0], [0, 1]])
    many = ItemContent([[f"t{j}" for j in range(i + 1)] for i in range(MAX_TAGS + 10)])
    assert len(many.vocabulary) == MAX_TAGS and "t0" in many.vocabulary  # most frequent kept
    wider = c.extend([["z", "x"]], [2001])                # tags outside the vocabulary drop
    assert wider.num_items == 4 and wider.vocabulary == c.vocabulary
    np.testing.assert_allclose(wider.tag_weights.toarray()[3], [1.0, 0.0])
    assert c.padded(2) is c and c.padded(5).num_items == 5


def test_age_bins_follow_the_event_time() -> None:
    c = ItemContent([[]] * 3, [2000, None, 2010])
    at_2005 = 35 * YEAR + DAY                              # 1970 + 35 years
    assert c.age_bins(np.array([0, 1, 2, 9]), at_2005).tolist() == [
        3, UNKNOWN_AGE, 0, UNKNOWN_AGE]                    # 5 years; unknown; before release
    per_event = c.age_bins(np.array([0, 0]), np.array([at_2005, at_2005 + 20 * YEAR]))
    assert per_event.tolist() == [3, 6]                    # 3-5 years, then 21+


@pytest.mark.parametrize("batch", [1, 13, 3000])
def test_affinity_updates_equal_a_recount_and_survive_bytes(batch: int) -> None:
    g, content = genre_stream(seed=1)
    whole = ContentAffinity.from_graph(g, content)
    live = ContentAffinity(content)
    for lo in range(0, g.num_edges, batch):
        live.update(g.user[lo:lo + batch], g.item[lo:lo + batch], g.ts[lo:lo + batch])
    users = np.arange(g.num_users + 3)                    # the last three have no events
    np.testing.assert_allclose(live.tag_scores(users), whole.tag_scores(users), rtol=1e-6)
    np.testing.assert_allclose(live.age_scores(users), whole.age_scores(users), rtol=1e-6)
    assert not whole.tag_scores(users[-3:]).any() and not whole.age_scores(users[-3:]).any()
    again = ContentAffinity.from_bytes(whole.to_bytes())
    tags, ages = again.item_terms(users, np.arange(g.num_items + 2), float(g.ts.max()))
    expected = whole.item_terms(users, np.arange(g.num_items + 2), float(g.ts.max()))
    np.testing.assert_allclose(tags, expected[0])
    np.testing.assert_allclose(ages, expected[1])
    assert not tags[:, -2:].any()                          # items the content does not know
    items = np.array([3, 0, g.num_items + 1, 3, 7])
    for user in (0, 5, g.num_users + 2):                   # one user at a time, as served
        one = whole.one_user_terms(user, items, float(g.ts.max()))
        full = whole.item_terms(np.array([user]), items, float(g.ts.max()))
        np.testing.assert_allclose(one[0], full[0][0])
        np.testing.assert_allclose(one[1], full[1][0])


def test_a_users_genre_shows_in_the_tag_term() -> None:
    g, content = genre_stream(seed=2)
    affinity = ContentAffinity.from_graph(g, content)
    tags, _ = affinity.item_terms(np.arange(g.num_users), np.arange(g.num_items), g.ts.max())
    share_a = np.array([np.mean(g.item[g.user == u] % 2 == 0) for u in range(g.num_users)])
    prefers_a = tags[:, 0] > tags[:, 1]                    # item 0 is genre A, item 1 genre B
    assert np.array_equal(prefers_a, share_a > 0.5)


def test_the_state_keeps_the_affinity_through_bytes() -> None:
    g, content = genre_stream(seed=3)
    state = TrendState.from_graph(g, (DAY,), content=content)
    again = TrendState.from_bytes(state.to_bytes())
    assert again.affinity is not None
    users = np.arange(g.num_users)
    np.testing.assert_allclose(again.affinity.tag_scores(users),
                               state.affinity.tag_scores(users))
    assert TrendState.from_bytes(TrendState.from_graph(g, (DAY,)).to_bytes()).affinity is None


def test_the_ranker_chooses_content_weights_on_validation_and_gains_recall() -> None:
    g, content = genre_stream(n=6000, users=120, items=60, seed=4)
    cut = float(np.quantile(g.ts, 0.85))
    history, test = g.subset(g.ts < cut), g.subset(g.ts >= cut)

    def test_recall(model: TrendRanker) -> float:
        scores = model.score(torch.arange(g.num_users)).double().numpy()
        hits = []
        for u in np.unique(test.user):
            seen = np.unique(history.item[history.user == u])
            new = set(test.item[test.user == u].tolist()) - set(seen.tolist())
            if new:
                row = scores[u].copy()
                row[seen] = -np.inf
                top = set(np.argsort(-row, kind="stable")[:10].tolist())
                hits.append(len(top & new) / min(len(new), 10))
        return float(np.mean(hits))

    plain = TrendRanker(base=None, k=10).fit(history)
    with_content = TrendRanker(base=None, k=10, content=content).fit(history)
    chosen = with_content.fitted_params()
    assert chosen.tag_weight > 0 and plain.fitted_params().tag_weight == 0
    assert "valid_recall_tags" in with_content.validation_
    assert with_content.validation_["valid_recall_tags"] > plain.validation_["valid_recall_covis"]
    assert test_recall(with_content) > test_recall(plain)
    assert with_content.hyper_parameters()["content"] == {"items": 60, "tags": 2}


def test_served_top_k_with_content_equals_exact_scoring() -> None:
    g, content = genre_stream(n=2000, users=30, items=50, seed=5)
    state = TrendState.from_graph(g, (DAY,), window=3, n_recent=5, content=content)
    params = TrendParams(DAY, math.inf, 0.2, 0.3, tag_weight=0.8, age_weight=0.4)
    ranker = TrendRanker(base=None, window=3, content=content)
    ranker.params_, ranker.state_, ranker._num_users = params, state, g.num_users
    served = TrendTopK(state, params, trend_candidates=5, content_candidates=60)
    exact = ranker.score(torch.arange(g.num_users + 1)).double().numpy()  # last: no events
    assert_served_equals_exact(served, exact, g)
    state.update([0], [49], [float(g.ts.max()) + 1])      # new events move it, no refit
    served.refresh()
    assert served.top_k(0, 5)[0].tolist() != [] and state.affinity.user_events[0] > 0


def test_pruned_content_scoring_keeps_the_ranking_exact() -> None:
    # a small pool: most candidates are the recent items' neighbours off the pool, and only
    # those whose content bound can still reach the top k get their content scored
    g, content = genre_stream(n=2000, users=30, items=50, seed=6)
    state = TrendState.from_graph(g, (DAY,), window=5, n_recent=5, content=content)
    params = TrendParams(DAY, math.inf, 0.0, 0.3, tag_weight=0.8, age_weight=0.4)
    ranker = TrendRanker(base=None, content=content)
    ranker.params_, ranker.state_, ranker._num_users = params, state, g.num_users
    served = TrendTopK(state, params, trend_candidates=2, content_candidates=15)
    scored: list[int] = []
    full_terms = state.affinity.one_user_terms

    def counting(user: int, items: np.ndarray, t: float, **kwargs):  # type: ignore[no-untyped-def]
        scored.append(len(items))
        return full_terms(user, items, t, **kwargs)

    state.affinity.one_user_terms = counting  # type: ignore[method-assign]
    exact = ranker.score(torch.arange(g.num_users)).double().numpy()
    covered = []
    for user in range(g.num_users):
        recent = state.recent_items(user)[:5]
        reach = set(served._covis(recent)[0].tolist()) | set(served._pool.tolist())
        if len(reach) == g.num_items:                     # every item is a candidate
            covered.append(user)
    assert len(covered) >= 10
    assert_served_equals_exact(served, exact[covered], g.subset(np.isin(g.user, covered)),
                               users=covered)
    scored.clear()
    for user in covered:                                   # nothing excluded: 35 off the pool
        items, _ = served.top_k(user, 3)
        assert items.tolist() == np.lexsort((np.arange(g.num_items), -exact[user]))[:3].tolist()
    # unpruned, every call would score all 35 items off the pool
    assert sum(scored) < len(covered) * (g.num_items - 15)
