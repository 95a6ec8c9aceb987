"""Random walks: valid moves, convergence to personalised PageRank, neighbourhoods, bands."""

from __future__ import annotations

import numpy as np
import pytest

from models.base import InteractionGraph
from models.random_walks import ItemWalker
from tests.models.conftest import Planted


def small_graph(seed: int = 0) -> InteractionGraph:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 8, 40)
    items = rng.integers(0, 10, 40)
    # Item 10 is isolated (no users), so dead ends are exercised.
    return InteractionGraph.from_arrays(users, items, num_users=8, num_items=11)


def power_iteration_ppr(g: InteractionGraph, start: int, alpha: float) -> np.ndarray:
    a = np.zeros((g.num_users, g.num_items))
    a[g.user, g.item] = 1.0
    item_deg, user_deg = a.sum(0), a.sum(1)
    to_user = np.divide(a.T, item_deg[:, None], out=np.zeros_like(a.T), where=item_deg[:, None] > 0)
    to_item = np.divide(a, user_deg[:, None], out=np.zeros_like(a), where=user_deg[:, None] > 0)
    p = to_user @ to_item  # item -> user -> item transition [I, I]
    e = np.zeros(g.num_items)
    e[start] = 1.0
    pi = e.copy()
    for _ in range(500):
        pi = alpha * e + (1 - alpha) * pi @ p
    return pi


@pytest.mark.parametrize(("alpha", "length"), [(0.5, 400), (0.2, 1000)])
@pytest.mark.parametrize("start", [0, 3])
def test_visit_frequencies_converge_to_personalized_pagerank(
    alpha: float, length: int, start: int
) -> None:
    g = small_graph()
    walker = ItemWalker.from_graph(g)
    walks = walker.walk(np.array([start]), 2000, length, alpha, np.random.default_rng(0))
    freq = np.bincount(walks.ravel(), minlength=g.num_items) / walks.size
    ppr = power_iteration_ppr(g, start, alpha)
    assert np.abs(freq - ppr).sum() < 0.01  # observed ~0.002
    ranked = walker.ranked_visits(np.array([start]), 2000, length, alpha, exclude_start=False)
    top = ranked.items[:3].tolist()
    assert top[0] == start == int(np.argmax(ppr))
    assert set(top) <= set(np.argsort(-ppr)[:4].tolist())


def test_every_step_is_a_two_hop_move_or_a_restart() -> None:
    g = small_graph(1)
    a = np.zeros((g.num_users, g.num_items), dtype=bool)
    a[g.user, g.item] = True
    co = (a.T.astype(int) @ a.astype(int)) > 0  # items sharing a user
    starts = np.arange(g.num_items)
    walks = ItemWalker.from_graph(g).walk(starts, 5, 6, 0.3, np.random.default_rng(0))
    assert walks.shape == (g.num_items, 5, 6)
    prev = np.broadcast_to(starts[:, None], (g.num_items, 5))
    for t in range(6):
        cur = walks[:, :, t]
        ok = co[prev, cur] | (cur == starts[:, None])
        assert ok.all()
        prev = cur
    assert (walks[10] == 10).all()  # the isolated item never leaves


def test_walks_are_deterministic_given_the_generator() -> None:
    w = ItemWalker.from_graph(small_graph())
    a = w.walk(np.arange(5), 3, 4, 0.2, np.random.default_rng(5))
    b = w.walk(np.arange(5), 3, 4, 0.2, np.random.default_rng(5))
    c = w.walk(np.arange(5), 3, 4, 0.2, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_neighborhoods_are_normalised_top_k_within_the_community(planted: Planted) -> None:
    g, k = planted.train, 8
    walker = ItemWalker.from_graph(g)
    items = np.arange(g.num_items)
    nbrs, w = walker.neighborhoods(items, num_walks=10, walk_length=10, top_k=k, seed=0)
    assert nbrs.shape == w.shape == (g.num_items, k)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    assert (np.diff(w, axis=1) <= 1e-7).all()  # most visited first
    real = w > 0
    assert (nbrs[real] != np.repeat(items, k).reshape(-1, k)[real]).all()  # never itself
    assert (nbrs[~real] == np.repeat(items, k).reshape(-1, k)[~real]).all()  # padding
    comm = planted.item_community
    assert (comm[nbrs] == comm[:, None]).all()  # walks never cross disjoint communities
    again = walker.neighborhoods(items, num_walks=10, walk_length=10, top_k=k, seed=0)
    assert np.array_equal(nbrs, again[0]) and np.array_equal(w, again[1])


def test_isolated_item_has_an_empty_neighbourhood() -> None:
    nbrs, w = ItemWalker.from_graph(small_graph()).neighborhoods(np.array([10]), top_k=4)
    assert (nbrs == 10).all() and (w == 0).all()


def test_chunking_does_not_change_shapes() -> None:
    g = small_graph()
    walker = ItemWalker.from_graph(g, max_chunk_visits=50)
    nbrs, w = walker.neighborhoods(np.arange(g.num_items), num_walks=4, walk_length=5, top_k=3)
    assert nbrs.shape == (g.num_items, 3)
    np.testing.assert_allclose(w[:10].sum(1), 1.0, rtol=1e-6)


def test_rank_band_samples_come_from_the_band() -> None:
    # A chain of items 0-1-2-...-29 (user j links items j and j+1): PPR rank ~ distance.
    n = 30
    users = np.repeat(np.arange(n - 1), 2)
    items = np.stack([np.arange(n - 1), np.arange(1, n)], 1).ravel()
    g = InteractionGraph.from_arrays(users, items, num_items=n + 1)  # item 30 isolated
    walker = ItemWalker.from_graph(g)
    out = walker.rank_band_samples(np.array([0, n]), band=(4, 8), num_samples=200,
                                   visits_per_start=20_000, restart_prob=0.3, seed=0)
    assert out.shape == (2, 200)
    # From item 0, visit ranks 4..7 (excluding the start) are items ~5..8 along the chain.
    assert set(out[0].tolist()) <= set(range(4, 11))
    assert len(set(out[1].tolist())) > 5  # the isolated start falls back to random items
