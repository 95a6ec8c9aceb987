"""The temporal split: boundaries, errors, and no leakage of later events into training."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.split import iso, temporal_split
from models.base import InteractionGraph


def _graph(ts, n_users=3, n_items=4):
    ts = np.asarray(ts, dtype=np.float64)
    idx = np.arange(len(ts))
    return InteractionGraph.from_arrays(idx % n_users, idx % n_items, ts,
                                        num_users=n_users, num_items=n_items)


def test_fractions_split_by_event_count_in_time_order():
    g = _graph(np.arange(100.0)[::-1])  # unsorted input
    s = temporal_split(g)
    assert (s.t1, s.t2) == (80.0, 90.0)
    assert (s.train.num_edges, s.valid.num_edges, s.test.num_edges) == (80, 10, 10)
    assert s.train.ts.max() < s.t1 <= s.valid.ts.min()
    assert s.valid.ts.max() < s.t2 <= s.test.ts.min()
    assert s.train.num_users == g.num_users and s.test.num_items == g.num_items


def test_explicit_times_and_summary():
    s = temporal_split(_graph([0, 86_400, 2 * 86_400, 3 * 86_400]), t1=86_400, t2=2 * 86_400)
    summary = s.summary()
    assert summary["t1_iso"] == "1970-01-02T00:00:00Z" == iso(86_400)
    assert (summary["train_events"], summary["valid_events"], summary["test_events"]) == (1, 1, 2)
    assert s.history("train+valid").num_edges == 2
    with pytest.raises(ValueError, match="fit_on"):
        s.history("everything")  # type: ignore[arg-type]


def test_ties_at_a_boundary_go_to_the_later_period():
    s = temporal_split(_graph([1, 2, 2, 2, 3, 4, 5, 6, 7, 8]), train_frac=0.2, valid_frac=0.5)
    assert s.t1 == 2.0 and s.train.num_edges == 1


@pytest.mark.parametrize("ts", [[0.0] * 5, [7.0] * 5])
def test_no_timestamps_is_a_clear_error(ts):
    with pytest.raises(ValueError, match="no usable timestamps"):
        temporal_split(_graph(ts))


def test_default_zero_timestamps_from_arrays_are_rejected():
    with pytest.raises(ValueError, match="no usable timestamps"):
        temporal_split(InteractionGraph.from_arrays([0, 1], [1, 0]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"t1": -5.0, "t2": 3.0}, "train period is empty"),
        ({"t1": 2.2, "t2": 2.5}, "validation period is empty"),
        ({"t1": 2.0, "t2": 50.0}, "test period is empty"),
        ({"t1": 4.0, "t2": 3.0}, "need t1 < t2"),
        ({"train_frac": 0.0}, "train_frac"),
        ({"train_frac": 0.9, "valid_frac": 0.1}, "no test period"),
    ],
)
def test_bad_boundaries_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        temporal_split(_graph(range(10)), **kwargs)


def test_empty_and_non_finite_graphs_are_rejected():
    with pytest.raises(ValueError, match="empty graph"):
        temporal_split(InteractionGraph.from_arrays([], [], [], num_users=1, num_items=1))
    with pytest.raises(ValueError, match="NaN"):
        temporal_split(_graph([0.0, np.nan, 2.0]))


@settings(max_examples=150, deadline=None, database=None)  # no .hypothesis/ in the tree
@given(
    ts=st.lists(st.integers(0, 30), min_size=1, max_size=60),
    train_frac=st.floats(0.05, 0.9),
    valid_frac=st.floats(0.05, 0.5),
)
def test_no_test_event_leaks_into_training(ts, train_frac, valid_frac):
    g = _graph(ts, n_users=5, n_items=7)
    try:
        s = temporal_split(g, train_frac=train_frac, valid_frac=valid_frac)
    except ValueError:
        return  # a refused split is fine; a wrong one is not
    assert s.train.ts.max() < s.t1 <= s.valid.ts.min()
    assert s.valid.ts.max() < s.t2 <= s.test.ts.min()
    assert s.train.num_edges + s.valid.num_edges + s.test.num_edges == g.num_edges
    rows = sorted(zip(g.user, g.item, g.ts, strict=True))
    parts = [(u, i, t) for p in (s.train, s.valid, s.test)
             for u, i, t in zip(p.user, p.item, p.ts, strict=True)]
    assert sorted(parts) == rows
