"""NeighbourBuffer: ring semantics, late events, growth, and rebuild == streamed extension."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.base import InteractionGraph
from models.neighbour_buffer import NeighbourBuffer


def reference(user, item, ts, weight, n, kind, num_nodes):
    """Per node, the ``n`` latest edges by (ts, arrival), oldest first (a plain loop)."""
    own, other = (user, item) if kind == "user" else (item, user)
    rows = []
    for v in range(num_nodes):
        pos = [j for j in range(len(own)) if own[j] == v]
        pos.sort(key=lambda j: (ts[j], j))
        rows.append([(int(other[j]), float(ts[j]), float(weight[j])) for j in pos[-n:]])
    return rows


def as_rows(buf: NeighbourBuffer, kind: str, num_nodes: int):
    nbr, ts, w, mask = buf.recent(kind, np.arange(num_nodes))
    return [[(int(a), float(b), float(c)) for a, b, c, m in zip(*r, strict=True) if m]
            for r in zip(nbr, ts, w, mask, strict=True)]


def test_ring_keeps_the_latest_in_time_order() -> None:
    buf = NeighbourBuffer(num_neighbours=3)
    buf.extend([0] * 5, [10, 11, 12, 13, 14], [1.0, 2.0, 3.0, 4.0, 5.0], [1, 2, 3, 4, 5])
    nbr, ts, w, mask = buf.recent("user", [0])
    assert nbr.tolist() == [[12, 13, 14]] and ts.tolist() == [[3.0, 4.0, 5.0]]
    assert w.tolist() == [[3.0, 4.0, 5.0]] and mask.all()
    assert buf.degree("user", [0]).tolist() == [5]
    buf.extend([0], [15], [6.0])  # one more evicts the oldest
    assert buf.recent("user", [0])[0].tolist() == [[13, 14, 15]]
    nbr, ts, w, mask = buf.recent("item", [12, 99])  # 99: beyond the buffer, no neighbours
    assert nbr.tolist() == [[0, 0, 0], [0, 0, 0]] and mask.tolist() == [[True, False, False],
                                                                        [False, False, False]]
    assert ts.dtype == np.float64 and w.dtype == np.float32 and nbr.dtype == np.int64


def test_late_events_merge_in_time_order_or_are_dropped() -> None:
    buf = NeighbourBuffer(num_neighbours=3).extend([0, 0, 0], [1, 2, 3], [10.0, 20.0, 30.0])
    buf.extend([0], [4], [15.0])
    assert buf.recent("user", [0])[1].tolist() == [[15.0, 20.0, 30.0]]
    buf.extend([0], [5], [5.0])  # older than all three kept: dropped, but counted
    assert buf.recent("user", [0])[0].tolist() == [[4, 2, 3]]
    assert buf.degree("user", [0]).tolist() == [5]


def test_equal_times_keep_arrival_order() -> None:
    buf = NeighbourBuffer(num_neighbours=2).extend([0, 0], [7, 8], [1.0, 1.0])
    buf.extend([0], [9], [1.0])
    assert buf.recent("user", [0])[0].tolist() == [[8, 9]]


def test_grows_for_new_indices_and_round_trips_its_state() -> None:
    buf = NeighbourBuffer(num_neighbours=2, num_users=1, num_items=1)
    buf.extend([0, 40], [0, 70], [1.0, 2.0])
    assert (buf.num_users, buf.num_items) == (41, 71)
    other = NeighbourBuffer(num_neighbours=2).load_state_dict(buf.state_dict())
    assert repr(other) == repr(buf)
    for kind, n in (("user", 41), ("item", 71)):
        assert as_rows(other, kind, n) == as_rows(buf, kind, n)
    with pytest.raises(ValueError, match="num_neighbours"):
        NeighbourBuffer(num_neighbours=3).load_state_dict(buf.state_dict())


@pytest.mark.parametrize("bad", [
    dict(user_idx=[0, 1], item_idx=[0], ts=[1.0, 2.0]),
    dict(user_idx=[-1], item_idx=[0], ts=[1.0]),
    dict(user_idx=[0], item_idx=[0], ts=[float("nan")]),
    dict(user_idx=[0], item_idx=[0], ts=[1.0], weight=[0.0]),
])
def test_rejects_bad_edges(bad: dict) -> None:
    with pytest.raises(ValueError):
        NeighbourBuffer().extend(**bad)


@pytest.mark.parametrize("num_neighbours", [1, 3, 20])
@pytest.mark.parametrize("seed", [0, 1])
def test_rebuild_equals_streamed_extension(num_neighbours: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    e = 400
    g = InteractionGraph.from_arrays(
        rng.integers(0, 15, e), rng.integers(0, 25, e), np.sort(rng.uniform(0, 1e5, e)),
        rng.uniform(0.5, 2.0, e), num_users=15, num_items=25)
    rebuilt = NeighbourBuffer.from_graph(g, num_neighbours)
    streamed = NeighbourBuffer(num_neighbours)
    cuts = np.sort(rng.choice(np.arange(1, e), 30, replace=False))
    for part in np.split(np.arange(e), cuts):
        streamed.extend(g.user[part], g.item[part], g.ts[part], g.weight[part])
    for kind, n in (("user", 15), ("item", 25)):
        assert as_rows(streamed, kind, n) == as_rows(rebuilt, kind, n)
        np.testing.assert_array_equal(streamed.degree(kind, np.arange(n)),
                                      rebuilt.degree(kind, np.arange(n)))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 5), st.integers(0, 30)),
             min_size=1, max_size=40),
    st.integers(1, 4),
    st.integers(1, 6),
)
def test_matches_a_plain_reference_for_any_arrival_order(edges, n, chunk) -> None:
    user, item, ts = (np.array(c) for c in zip(*edges, strict=True))
    ts = ts.astype(np.float64)
    weight = np.arange(1, len(user) + 1, dtype=np.float32)  # tells equal edges apart
    buf = NeighbourBuffer(n)
    for lo in range(0, len(user), chunk):
        sl = slice(lo, lo + chunk)
        buf.extend(user[sl], item[sl], ts[sl], weight[sl])
    for kind, size in (("user", buf.num_users), ("item", buf.num_items)):
        assert as_rows(buf, kind, size) == reference(user, item, ts, weight, n, kind, size)
