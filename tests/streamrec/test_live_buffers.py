"""The live updater restored from the neighbour buffers a retrain publishes serves exactly
what one rebuilt from the whole history serves (both stores)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from store import version_buffers
from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.events import Event
from stream.synthetic import generate
from streamrec.live import LiveUpdater
from streamrec.retrain import RetrainPlan, retrain


@pytest.fixture
def stores(store_url: str):  # type: ignore[no-untyped-def]
    graph = GraphStore(store_url)
    yield graph, EmbeddingStore(graph.engine), list(generate(n_events=2400, seed=5).events())
    graph.engine.dispose()


def _plan(cutoff: float | None = None) -> RetrainPlan:
    return RetrainPlan(model="mf", epochs=2, dim=8, valid_fraction=0.2, progress=False,
                       cutoff=cutoff)


def _without_history(graph: GraphStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any read of the history fail: a restored start must not need one."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the live updater read the history")

    monkeypatch.setattr(graph, "snapshot", refuse)


def _assert_same_state(a: LiveUpdater, b: LiveUpdater) -> None:
    inc_a, inc_b = a._fold.inc, b._fold.inc  # type: ignore[union-attr]
    assert torch.equal(inc_a.user_embeddings(), inc_b.user_embeddings())
    assert torch.equal(inc_a.item_embeddings(), inc_b.item_embeddings())
    for side, n in (("user", inc_a.num_users), ("item", inc_a.num_items)):
        idx = np.arange(n + 1)
        for left, right in zip(inc_a.buffer.recent(side, idx), inc_b.buffer.recent(side, idx),
                               strict=True):
            np.testing.assert_array_equal(left, right)
        np.testing.assert_array_equal(inc_a.buffer.degree(side, idx),
                                      inc_b.buffer.degree(side, idx))
        np.testing.assert_array_equal(inc_a.last_update(side, idx[:-1]),
                                      inc_b.last_update(side, idx[:-1]))


def test_restored_buffers_serve_what_the_full_history_serves(
    stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph, embeddings, events = stores
    graph.write_batch(events[:1500])
    first = retrain(graph, embeddings, _plan())
    assert first.has_updater_state and embeddings.neighbour_buffers(first.id)
    with monkeypatch.context() as patch:
        _without_history(graph, patch)
        live = LiveUpdater(graph, embeddings, device="cpu")
        live(graph.write_batch(events[1500:1900]))
    cutoff = events[1899].ts
    # stored after the cutoff, unseen by the next base: late events (ts <= cutoff) of a
    # new user and of known ones, and ordinary new events
    late = [Event.create("late-user", events[k].item_id, events[k].ts) for k in (3, 700)]
    late += [Event.create(events[k].user_id, events[k + 1].item_id, events[k].ts)
             for k in (100, 1200)]
    second = retrain(graph, embeddings, _plan(cutoff=cutoff))
    graph.write_batch(late)
    graph.write_batch(events[1900:2400])
    replayed = live.stats.replayed_events
    with monkeypatch.context() as patch:
        _without_history(graph, patch)
        live.sync()  # the new base, from its published buffers
        assert live.version_id == second.id
        assert live.stats.replayed_events - replayed == 504
        restored = embeddings.load()
    # the reference: the same version without its buffers (as an older retrain left it),
    # so the updater rebuilds them from the history the base saw, as every start did before
    with embeddings.engine.begin() as conn:
        version_buffers.delete(conn, [second.id])
    assert embeddings.neighbour_buffers(second.id) is None
    rebuilt = LiveUpdater(graph, embeddings, device="cpu")
    rebuilt.sync()
    assert rebuilt.stats.replayed_events == 504
    _assert_same_state(live, rebuilt)
    again = embeddings.load()
    assert restored.overlay_users == again.overlay_users
    assert restored.overlay_items == again.overlay_items
    np.testing.assert_array_equal(restored.users, again.users)
    np.testing.assert_array_equal(restored.items, again.items)


def test_another_neighbour_count_rebuilds_from_the_history(stores) -> None:
    graph, embeddings, events = stores
    graph.write_batch(events[:1200])
    retrain(graph, embeddings, _plan())
    graph.write_batch(events[1200:1400])
    small = LiveUpdater(graph, embeddings, device="cpu", num_neighbours=3)
    small.sync()
    assert small._fold.inc.buffer.num_neighbours == 3  # type: ignore[union-attr]
    assert small.stats.replayed_events == 200


def test_a_one_dimensional_version_publishes_no_buffers(stores) -> None:
    graph, embeddings, events = stores
    graph.write_batch(events[:500])
    info = retrain(graph, embeddings, RetrainPlan(model="popularity", valid_fraction=0))
    assert embeddings.neighbour_buffers(info.id) is None
