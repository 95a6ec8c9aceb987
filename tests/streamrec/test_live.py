"""The live updater on real stores: overlay rows, new bases, replay after the cutoff."""

from __future__ import annotations

import numpy as np
import pytest

from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.synthetic import generate
from streamrec.live import LiveUpdater
from streamrec.queries import QueryService
from streamrec.retrain import RetrainPlan, retrain


@pytest.fixture
def setup(tmp_path):  # type: ignore[no-untyped-def]
    graph = GraphStore(f"sqlite:///{tmp_path / 'live.db'}")
    events = list(generate(n_events=3000, seed=21, days=10).events())
    yield graph, EmbeddingStore(graph.engine), events
    graph.engine.dispose()


def _plan(cutoff: float | None = None) -> RetrainPlan:
    # the newest 20% are the validation window the updater is trained on
    return RetrainPlan(model="mf", epochs=2, dim=16, valid_fraction=0.2, progress=False,
                       cutoff=cutoff)


def test_batches_after_the_base_become_overlay_rows(setup) -> None:
    graph, embeddings, events = setup
    graph.write_batch(events[:2000])
    info = retrain(graph, embeddings, _plan())
    assert info.has_updater_state and "updater_seconds" in info.metrics
    live = LiveUpdater(graph, embeddings, device="cpu")
    result = graph.write_batch(events[2000:2100])
    live(result)
    assert live.version_id == info.id
    assert embeddings.overlay_size(info.id) > 0
    user = events[2050].user_id
    emb = QueryService(graph, embeddings).embedding("user", user)
    assert emb["source"] == "overlay" and emb["updated_at"] > info.cutoff
    duplicate = graph.write_batch(events[2000:2100])
    before = live.stats.events
    live(duplicate)  # redelivered events are not stored again, so not applied again
    assert live.stats.events == before


def test_new_base_replays_events_after_cutoff_exactly_once(setup) -> None:
    graph, embeddings, events = setup
    graph.write_batch(events[:1500])
    retrain(graph, embeddings, _plan())
    live = LiveUpdater(graph, embeddings, device="cpu")
    live(graph.write_batch(events[1500:2000]))
    # a retrain snapshots up to C while events keep arriving on the old base
    cutoff = events[1999].ts
    live(graph.write_batch(events[2000:2300]))  # arrives during the retrain
    new = retrain(graph, embeddings, _plan(cutoff=cutoff))
    replayed_before = live.stats.replayed_events
    live(graph.write_batch(events[2300:2400]))  # first batch after activation
    assert live.version_id == new.id
    # (C, now]: the 300 events that arrived during the retrain and the 100 after, once each
    assert live.stats.replayed_events - replayed_before == 400
    merged = embeddings.load()
    assert set(np.unique([int(k) for k in merged.overlay_users])) > set()
    # from scratch: a new updater rebuilds the same state from base + events after C
    fresh = LiveUpdater(graph, embeddings, device="cpu")
    fresh(graph.write_batch([]))
    again = embeddings.load()
    assert fresh.stats.replayed_events == 400
    assert np.allclose(merged.users, again.users, atol=1e-5)
    assert np.allclose(merged.items, again.items, atol=1e-5)
    assert merged.overlay_users.keys() == again.overlay_users.keys()


def test_nothing_to_do_before_the_first_retrain(setup) -> None:
    graph, embeddings, events = setup
    live = LiveUpdater(graph, embeddings, device="cpu")
    live(graph.write_batch(events[:10]))
    assert live.version_id is None and live.stats.batches == 0


def test_a_one_dimensional_version_serves_its_base(setup) -> None:
    graph, embeddings, events = setup
    graph.write_batch(events[:2000])
    info = retrain(graph, embeddings, RetrainPlan(model="popularity", valid_fraction=0))
    live = LiveUpdater(graph, embeddings, device="cpu")
    live(graph.write_batch(events[2000:2100]))
    assert live.version_id == info.id and embeddings.overlay_size(info.id) == 0


def test_a_version_without_trained_weights_still_updates(setup) -> None:
    graph, embeddings, events = setup
    graph.write_batch(events[:2000])
    info = retrain(graph, embeddings, RetrainPlan(model="mf", epochs=2, dim=8,
                                                  valid_fraction=0, progress=False))
    assert not info.has_updater_state
    live = LiveUpdater(graph, embeddings, device="cpu")
    live(graph.write_batch(events[2000:2100]))
    assert embeddings.overlay_size(info.id) > 0
