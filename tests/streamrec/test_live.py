"""The live updater on real stores: overlay rows, new bases, replay after the cutoff."""

from __future__ import annotations

import time

import numpy as np
import pytest

from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.events import Event
from stream.synthetic import generate
from streamrec import retrain as retrain_job
from streamrec.live import LiveUpdater
from streamrec.queries import QueryService
from streamrec.retrain import RetrainPlan, retrain


def _setup(url: str):  # type: ignore[no-untyped-def]
    graph = GraphStore(url)
    events = list(generate(n_events=3000, seed=21, days=10).events())
    yield graph, EmbeddingStore(graph.engine), events
    graph.engine.dispose()


@pytest.fixture
def setup(tmp_path):  # type: ignore[no-untyped-def]
    yield from _setup(f"sqlite:///{tmp_path / 'live.db'}")


@pytest.fixture
def both_stores(store_url: str):  # type: ignore[no-untyped-def]
    """``setup`` on a SQLite file and on PostgreSQL."""
    yield from _setup(store_url)


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


def _live_on_a_first_base(graph, embeddings, events) -> LiveUpdater:  # type: ignore[no-untyped-def]
    """A base on the first 1500 events, then 500 more folded in by a live updater."""
    graph.write_batch(events[:1500])
    retrain(graph, embeddings, _plan())
    live = LiveUpdater(graph, embeddings, device="cpu")
    live(graph.write_batch(events[1500:2000]))
    return live


def test_new_base_replays_events_after_cutoff_exactly_once(setup) -> None:
    graph, embeddings, events = setup
    live = _live_on_a_first_base(graph, embeddings, events)
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


def _wait(condition, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_events_stored_late_during_a_retrain_are_served_after_activation(
    both_stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph, embeddings, events = both_stores
    live = _live_on_a_first_base(graph, embeddings, events)
    cutoff = events[1999].ts
    # Kafka delivers them while the retrain trains on its snapshot: a user whose events are
    # older than the cutoff, and ordinary new events
    late = [Event.create("late-user", events[k].item_id, events[k].ts) for k in (10, 500, 1200)]
    real_fit = retrain_job.fit_model

    def fit_while_events_arrive(plan, snapshot):  # type: ignore[no-untyped-def]
        graph.write_batch(late)
        live(graph.write_batch(events[2000:2100]))  # still on the old base
        return real_fit(plan, snapshot)

    monkeypatch.setattr(retrain_job, "fit_model", fit_while_events_arrive)
    new = retrain(graph, embeddings, _plan(cutoff=cutoff))
    assert new.ingest_seq == 2000  # the snapshot held the first 2000 stored events
    live.sync()
    assert live.version_id == new.id
    # exactly the events the base did not see: the 3 late ones and the 100 after it
    served = QueryService(graph, embeddings).embedding("user", "late-user")
    assert served["source"] == "overlay" and served["version"] == new.name
    fresh = LiveUpdater(graph, embeddings, device="cpu")
    fresh.sync()
    assert fresh.stats.replayed_events == 103


def test_a_new_base_is_replayed_on_a_quiet_stream(setup) -> None:
    graph, embeddings, events = setup
    graph.write_batch(events[:2000])
    with LiveUpdater(graph, embeddings, device="cpu", poll_s=0.05) as live:
        first = retrain(graph, embeddings, _plan())
        graph.write_batch(events[2000:2200])  # stored, but no batch reaches this updater
        assert _wait(lambda: embeddings.overlay_size(first.id) > 0)
        second = retrain(graph, embeddings, _plan(cutoff=events[1999].ts))
        # nothing arrives after the activation: the watcher replays the 200 events anyway
        assert _wait(lambda: live.version_id == second.id and live.seq == 2200)
        assert _wait(lambda: embeddings.overlay_size(second.id) > 0)
        for start in range(2200, 2600, 100):  # batches, folded fast in arrival order
            live(graph.write_batch(events[start:start + 100][::-1]))
        assert _wait(lambda: live.unsettled == 0)  # the pause settles them canonically
    settled = embeddings.load()  # the watcher has stopped: its last sync is committed
    fresh = LiveUpdater(graph, embeddings, device="cpu")
    fresh.sync()  # from the base: canonical
    again = embeddings.load()
    assert np.abs(settled.users - again.users).max() < 1e-5
    assert np.abs(settled.items - again.items).max() < 1e-5
    user = events[2100].user_id
    served = QueryService(graph, embeddings).embedding("user", user)
    assert served["source"] == "overlay" and served["version"] == second.name


def test_two_updaters_sharing_a_store_agree_with_one(both_stores) -> None:
    graph, embeddings, events = both_stores
    graph.write_batch(events[:1500])
    info = retrain(graph, embeddings, _plan())
    # small settle_every: settling syncs meet b's late events mid-stream
    a = LiveUpdater(graph, embeddings, device="cpu", chunk=128, settle_every=256)
    b = LiveUpdater(graph, embeddings, device="cpu", chunk=128, settle_every=256)
    # two processes, each with its partitions (keyed by user); b lags behind a
    rest = events[1500:2700]
    parts = [[e for e in rest if int(e.user_id[1:]) % 2 == p] for p in (0, 1)]
    batches = [np.array_split(np.arange(len(p)), 9) for p in parts]
    for step in range(11):
        if step < 9:
            a(graph.write_batch([parts[0][k] for k in batches[0][step]]))
        if step >= 2:
            b(graph.write_batch([parts[1][k] for k in batches[1][step - 2]]))
    for live in (a, b):  # the stream pauses: each one's watcher settles what it folded fast
        live.sync(settle=True)
    # b's events sort before a's complete steps: undone and folded again
    assert a.stats.rewinds + b.stats.rewinds + a.stats.rebuilds + b.stats.rebuilds > 0
    two = embeddings.load()
    one = LiveUpdater(graph, embeddings, device="cpu", chunk=128)
    one.sync()  # from scratch: the same base and events, one updater
    single = embeddings.load()
    assert single.overlay_users.keys() == two.overlay_users.keys()
    assert single.overlay_items.keys() == two.overlay_items.keys()
    diff = max(np.abs(single.users - two.users).max(), np.abs(single.items - two.items).max())
    assert diff < 1e-5, f"max abs difference of 1 vs 2 updaters: {diff}"
    assert embeddings.overlay_size(info.id) == len(single.overlay_users) + len(
        single.overlay_items)
