"""NeighbourBuffer.to_bytes / from_bytes: an exact, compact round trip (no pickles)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.neighbour_buffer import NeighbourBuffer


def _assert_same(a: NeighbourBuffer, b: NeighbourBuffer) -> None:
    assert repr(a) == repr(b)
    left, right = a.state_dict(), b.state_dict()
    assert left.keys() == right.keys()
    for key, value in left.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(right[key]), err_msg=key)
        assert np.asarray(value).dtype == np.asarray(right[key]).dtype, key


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 9), st.floats(0, 1e9),
                       st.floats(0.01, 5.0)), max_size=60),
    st.integers(1, 5),
)
def test_round_trip_is_exact(edges, n) -> None:
    buf = NeighbourBuffer(n)
    if edges:
        user, item, ts, w = (np.array(c) for c in zip(*edges, strict=True))
        buf.extend(user, item, ts, w)
    _assert_same(NeighbourBuffer.from_bytes(buf.to_bytes()), buf)


def test_a_restored_buffer_extends_like_the_original() -> None:
    rng = np.random.default_rng(3)
    buf = NeighbourBuffer(4).extend(rng.integers(0, 9, 200), rng.integers(0, 14, 200),
                                    rng.uniform(0, 1e6, 200), rng.uniform(0.5, 2, 200))
    restored = NeighbourBuffer.from_bytes(buf.to_bytes())
    more = (rng.integers(0, 12, 50), rng.integers(0, 20, 50), rng.uniform(0, 2e6, 50))
    _assert_same(restored.extend(*more), buf.extend(*more))


def test_sizes_and_n_survive_even_when_empty() -> None:
    buf = NeighbourBuffer(7, num_users=3, num_items=5)
    data = buf.to_bytes()
    restored = NeighbourBuffer.from_bytes(data)
    assert (restored.num_neighbours, restored.num_users, restored.num_items) == (7, 3, 5)
    assert NeighbourBuffer.stored_num_neighbours(data) == 7


def test_only_held_edges_are_stored() -> None:
    # 10,000 nodes with one edge each in an N = 20 buffer: the tables hold 20 slots a node,
    # the bytes about one edge (16 bytes) and a length and degree (12 bytes) a node
    buf = NeighbourBuffer(20).extend(np.arange(10_000), np.arange(10_000), np.ones(10_000))
    data = buf.to_bytes()
    assert len(data) < 2 * 10_000 * (16 + 12) + 4096
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        assert z["user_nbr"].dtype == np.int32 and z["user_ts"].dtype == np.float64
        assert z["user_w"].dtype == np.float32 and len(z["item_ts"]) == 10_000


@pytest.mark.parametrize("data", [b"", b"garbage", b"PK\x03\x04 truncated"])
def test_other_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a NeighbourBuffer"):
        NeighbourBuffer.from_bytes(data)


def test_inconsistent_arrays_are_refused() -> None:
    buf = NeighbourBuffer(2).extend([0, 0, 1], [0, 1, 1], [1.0, 2.0, 3.0])
    with np.load(io.BytesIO(buf.to_bytes()), allow_pickle=False) as z:
        arrays = dict(z)
    arrays["user_ts"] = arrays["user_ts"][:-1]
    out = io.BytesIO()
    np.savez(out, **arrays)
    with pytest.raises(ValueError, match="user arrays disagree"):
        NeighbourBuffer.from_bytes(out.getvalue())
    arrays["format"] = np.array(99)
    out = io.BytesIO()
    np.savez(out, **arrays)
    with pytest.raises(ValueError, match="format 99"):
        NeighbourBuffer.from_bytes(out.getvalue())
