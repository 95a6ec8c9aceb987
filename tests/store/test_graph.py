"""Graph store behaviour on SQLite and PostgreSQL: idempotent writes, time slices, indices."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from store.graph import DeadLetter, GraphStore
from stream.events import Event


def _events() -> list[Event]:
    # u0: i0@10 i1@20 i2@30 ; u1: i1@15 i3@40 ; u2: i0@50
    rows = [
        ("u0", "i0", 10),
        ("u1", "i1", 15),
        ("u0", "i1", 20),
        ("u0", "i2", 30),
        ("u1", "i3", 40),
        ("u2", "i0", 50),
    ]
    return [Event.create(u, i, t) for u, i, t in rows]


@pytest.fixture
def store(store_url: str) -> GraphStore:
    s = GraphStore(store_url)
    s.write_batch(_events())
    yield s
    s.engine.dispose()


def test_dense_indices_follow_first_appearance(store: GraphStore) -> None:
    assert store.node_ids("user") == ["u0", "u1", "u2"]
    assert store.node_ids("item") == ["i0", "i1", "i2", "i3"]
    assert store.node_index("item", ["i3", "nope"]) == {"i3": 3}


def test_rewrite_is_idempotent_and_counted(store: GraphStore) -> None:
    again = store.write_batch(_events() + [Event.create("u9", "i9", 60)])
    assert (again.stored, again.duplicates, again.new_users, again.new_items) == (1, 6, 1, 1)
    assert store.counts() == {"interactions": 7, "users": 4, "items": 5, "dead_letters": 0}
    # only the newly stored event is reported downstream
    assert again.user.tolist() == [3] and again.item.tolist() == [4]


def test_in_batch_duplicates_are_counted(store_url: str) -> None:
    s = GraphStore(store_url)
    e = Event.create("a", "b", 1)
    r = s.write_batch([e, e, e])
    assert (r.stored, r.duplicates) == (1, 2)


def test_snapshot_and_windows(store: GraphStore) -> None:
    snap = store.snapshot(until=30)
    assert snap.ts.tolist() == [10, 15, 20, 30]
    assert (snap.num_users, snap.num_items) == (3, 4)
    window = store.edges_between(15, 40)  # (15, 40]
    assert window.ts.tolist() == [20, 30, 40]
    assert list(zip(window.user.tolist(), window.item.tolist(), strict=True)) == [
        (0, 1),
        (0, 2),
        (1, 3),
    ]
    with pytest.raises(ValueError, match="before t0"):
        store.edges_between(40, 15)


def test_recent_neighbours_newest_first(store: GraphStore) -> None:
    items, ts, _ = store.recent_neighbours("user", 0, before=30, n=5)
    assert items.tolist() == [1, 0] and ts.tolist() == [20, 10]
    items, _, _ = store.recent_neighbours("user", 0, n=2)
    assert items.tolist() == [2, 1]
    users, _, _ = store.recent_neighbours("item", 0)
    assert users.tolist() == [2, 0]
    with pytest.raises(ValueError, match="kind"):
        store.recent_neighbours("shop", 0)


def test_degrees_and_items_seen(store: GraphStore) -> None:
    users, items = store.degrees()
    assert users.tolist() == [3, 2, 1] and items.tolist() == [2, 2, 1, 1]
    users, _ = store.degrees(until=20)
    assert users.tolist() == [2, 1, 0]
    assert store.items_seen(0).tolist() == [0, 1, 2]
    assert store.items_seen(0, until=15).tolist() == [0]


def test_dead_letters_kept_once(store_url: str) -> None:
    s = GraphStore(store_url)
    d = DeadLetter(b"\xff", "message is not UTF-8", "events", 2, 7)
    s.write_batch([], [d])
    s.write_batch([], [d])  # redelivered: still one row
    rows = s.dead_letter_rows()
    assert len(rows) == 1
    assert rows[0]["raw"] == b"\xff" and rows[0]["kafka_offset"] == 7


def test_concurrent_writers_keep_indices_dense(store_url: str) -> None:
    """Two writers adding overlapping new nodes: indices stay 0..n-1 with no gaps."""
    stores = [GraphStore(store_url), GraphStore(store_url)]
    batches = [
        [Event.create(f"u{k}", f"i{(k * 7 + w) % 50}", k + w / 10) for k in range(200)]
        for w in range(2)
    ]
    pairs = zip(stores, batches, strict=True)
    threads = [threading.Thread(target=s.write_batch, args=(b,)) for s, b in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = stores[0].node_ids("user")
    assert len(ids) == 200 and len(set(ids)) == 200
    assert stores[0].counts()["interactions"] == 400
    snap = stores[0].snapshot()
    assert snap.num_users == 200 and np.unique(snap.user).size == 200


def test_item_counts_in_sql(store: GraphStore) -> None:
    assert store.item_counts().tolist() == [2, 2, 1, 1]
    assert store.item_counts(since=20).tolist() == [1, 0, 1, 1]  # ts > 20
    assert store.last_event_time() == 50
