"""Answers follow another process's commits at once, not on the polling interval: a new user's
event and overlay row, written through other connections, show in the HTTP answers within a
second while the refresh interval is a minute; on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import numpy as np
from fastapi.testclient import TestClient

from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.events import Event
from streamrec.api import create_app
from tests.streamrec.test_api import _community_events, _retrain


def _reflected(client: TestClient, user: str, item: str) -> bool:
    emb = client.get(f"/users/{user}/embedding")
    if emb.status_code != 200 or emb.json()["source"] != "overlay":
        return False
    rec = client.get(f"/users/{user}/recommendations", params={"k": 5}).json()
    return not rec["fallback"] and item not in [i["item_id"] for i in rec["items"]]


def test_a_new_users_event_shows_without_waiting_for_the_interval(store_url: str) -> None:
    graph = GraphStore(store_url)
    graph.write_batch(_community_events())
    _retrain(graph, EmbeddingStore(graph.engine), "mf")
    app = create_app(graph, EmbeddingStore(graph.engine), ann_backend="numpy",
                     refresh_interval_s=60.0)
    writer = GraphStore(store_url)  # another connection, as the ingest process has
    overlay = EmbeddingStore(writer.engine)
    try:
        with TestClient(app) as client:
            assert client.get("/users/newbie/recommendations").json()["fallback"] is True
            time.sleep(0.3)  # the refresher thread is waiting now
            latencies = []
            for n, item in enumerate(["A1", "A2", "B1"]):
                user = f"newbie{n}"
                started = time.monotonic()
                writer.write_batch([Event.create(user, item, 1_800_000_000.0 + n)])
                active = overlay.active_version()
                assert active is not None
                idx = writer.node_index("user", [user])[user]
                vector = np.full((1, active.dim), 0.5, np.float32)
                overlay.write_overlay(active.id, "user", np.array([idx]), vector,
                                      1_800_000_000.0 + n)
                while not _reflected(client, user, item):
                    assert time.monotonic() - started < 10, "never reflected"
                    time.sleep(0.005)
                latencies.append(time.monotonic() - started)
            assert max(latencies) < 1.0, latencies
    finally:
        writer.engine.dispose()
        graph.engine.dispose()
