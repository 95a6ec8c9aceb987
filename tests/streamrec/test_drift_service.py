"""Planted drift through the product path: events stored by the graph store, the retrain job
(base + trained updater), the ingest hook's incremental updates (overlay rows) and the query
service. After users switch taste, base + incremental must rank the new taste's items far
above the stale base does, and at least as well as (or close to) a full retrain.

The world: 60 users, topics A and B of 40 items each, three periods of 12 events per user.
Users 0-29 like A and 30-59 like B in period 1; in period 2 users 0-9 switch to B and 50-59
to A (drift the updater's live-update training sees); in period 3, streamed incrementally,
users 10-19 switch to B and 40-49 to A. The rest keep their taste.
"""

from __future__ import annotations

import numpy as np
import pytest

from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.events import Event
from streamrec.live import LiveUpdater
from streamrec.queries import QueryService
from streamrec.retrain import RetrainPlan, retrain

T0, PERIOD, PER_USER, ITEMS = 1_700_000_000.0, 1_000_000.0, 12, 40


def _tastes() -> list[np.ndarray]:
    t1 = np.repeat([0, 1], 30)
    t2 = t1.copy()
    t2[:10], t2[50:] = 1, 0
    t3 = t2.copy()
    t3[10:20], t3[40:50] = 1, 0
    return [t1, t2, t3]


def _period(k: int, taste: np.ndarray, rng: np.random.Generator) -> list[Event]:
    rows = []
    for u, t in enumerate(taste):
        for _ in range(PER_USER):
            topic = t if rng.random() < 0.95 else 1 - t
            rows.append((T0 + k * PERIOD + rng.uniform(0, PERIOD), f"u{u}",
                         f"{'AB'[topic]}{rng.integers(ITEMS)}"))
    return [Event.create(u, i, ts) for ts, u, i in sorted(rows)]


def _served(graph: GraphStore, embeddings: EmbeddingStore) -> QueryService:
    service = QueryService(graph, embeddings)
    service.refresh()  # load now: the service keeps serving this state
    return service


def _auc(service: QueryService, users: range, topic: str) -> float:
    """Mean over ``users`` of the share of (``topic`` item, other item) pairs the served
    embeddings rank in that order: 1 = every item of ``topic`` above every other item."""
    s = service.served
    snap = s.snapshot
    items = sorted(s.item_index)
    vectors = np.stack([snap.items[s.item_index[i]] for i in items])
    wanted = np.array([i.startswith(topic) for i in items])
    out = []
    for u in users:
        scores = vectors @ snap.users[s.user_index[f"u{u}"]]
        out.append(np.mean(scores[wanted][:, None] > scores[~wanted][None, :]))
    return float(np.mean(out))


@pytest.fixture
def graph(store_url: str):  # type: ignore[no-untyped-def]
    g = GraphStore(store_url)
    yield g
    g.engine.dispose()


def test_incremental_follows_planted_drift_like_a_retrain(graph: GraphStore) -> None:
    rng = np.random.default_rng(0)
    t1, t2, t3 = _tastes()
    embeddings = EmbeddingStore(graph.engine)
    plan = RetrainPlan(model="lightgcn", epochs=30, dim=16, valid_fraction=0.2, seed=0,
                       progress=False, extra={"lr": 0.02})
    graph.write_batch(_period(0, t1, rng) + _period(1, t2, rng))
    retrain(graph, embeddings, plan)  # the base and its updater, trained on periods 1-2
    stale = _served(graph, embeddings)
    live = LiveUpdater(graph, embeddings, device="cpu")
    period3 = _period(2, t3, rng)
    for start in range(0, len(period3), 60):  # micro-batches, as the consumer writes them
        live(graph.write_batch(period3[start:start + 60]))
    # the first batch is part of the replay after the base's cutoff, the rest are updates
    assert live.stats.events + live.stats.replayed_events == len(period3)
    incremental = _served(graph, embeddings)
    retrain(graph, embeddings, plan)
    retrained = _served(graph, embeddings)

    def aucs(service: QueryService) -> dict[str, float]:
        return {"to B": _auc(service, range(10, 20), "B"),
                "to A": _auc(service, range(40, 50), "A"),
                "kept A": _auc(service, range(20, 30), "A"),
                "kept B": _auc(service, range(30, 40), "B")}

    got = {name: aucs(s) for name, s in
           (("stale", stale), ("incremental", incremental), ("retrain", retrained))}
    for drift in ("to B", "to A"):
        assert got["stale"][drift] <= 0.1, got  # the stale base still ranks the old taste
        assert got["incremental"][drift] >= got["stale"][drift] + 0.5, got
        assert got["incremental"][drift] >= got["retrain"][drift] - 0.1, got
    for kept in ("kept A", "kept B"):  # users who kept their taste keep it
        assert got["incremental"][kept] >= 0.9, got
