"""The ingest sequence on SQLite and PostgreSQL: commit order, what a snapshot saw, what came
after it (late events included), and versions that record it."""

from __future__ import annotations

import threading

import numpy as np
from sqlalchemy import event, text

from store import event_log
from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.events import Event


def _batch(tag: str, n: int, t0: float) -> list[Event]:
    # items of their own too: a shared new item would make writers wait on its unique key
    return [Event.create(f"{tag}{k}", f"{tag}-i{k % 3}", t0 + k) for k in range(n)]


def test_ids_grow_in_commit_order_under_concurrent_writers(store_url: str) -> None:
    store = GraphStore(store_url)
    in_commit, release = threading.Event(), threading.Event()

    def hold_first_commit(conn) -> None:  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "first":
            in_commit.set()
            assert release.wait(30)

    event.listen(store.engine, "commit", hold_first_commit)
    first = threading.Thread(target=store.write_batch, args=(_batch("a", 5, 100),),
                             name="first")
    second = threading.Thread(target=store.write_batch, args=(_batch("b", 5, 10),),
                              name="second")
    first.start()
    assert in_commit.wait(30)  # the first batch's rows are inserted, not yet committed
    second.start()
    second.join(1.5)
    # the second writer cannot take ids and commit past the first's uncommitted ones
    assert second.is_alive() and store.ingest_seq() == 0
    release.set()
    first.join(30)
    second.join(30)
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, event_id FROM interactions ORDER BY id")).all()
    firsts = {e.event_id for e in _batch("a", 5, 100)}
    assert [eid in firsts for _, eid in rows] == [True] * 5 + [False] * 5
    store.engine.dispose()


def test_a_snapshot_knows_what_it_saw_and_late_events_are_unseen(store_url: str) -> None:
    store = GraphStore(store_url)
    store.write_batch(_batch("u", 10, 100))  # ts 100..109
    graph, seq = store.snapshot_seen(until=105)
    assert seq == store.ingest_seq() == 10 and graph.num_edges == 6
    store.write_batch([Event.create("late", "u-i0", 101), Event.create("u1", "u-i2", 200)])
    assert store.snapshot(until=105, seq=seq).num_edges == 6  # the late one was not seen
    assert store.snapshot(until=105).num_edges == 7
    with store.engine.connect() as conn:
        after = event_log.events_after(conn, seq)
        unseen = event_log.unseen_by(conn, seq, 105.0, upto=event_log.ingest_seq(conn))
        by_time = event_log.unseen_by(conn, None, 105.0, upto=12)
    assert after.seq.tolist() == [11, 12] and after.upto == 12
    assert after.ts.tolist() == [101.0, 200.0]
    # ts > cutoff (4 of the first batch) and everything stored after the snapshot (2)
    assert sorted(unseen.ts.tolist()) == [101.0, 106.0, 107.0, 108.0, 109.0, 200.0]
    assert 101.0 not in by_time.ts  # event time alone loses the late event
    assert np.all(np.diff(unseen.seq) > 0)
    store.engine.dispose()


def test_versions_record_the_ingest_sequence_and_old_tables_gain_it(store_url: str) -> None:
    embeddings = EmbeddingStore(store_url)
    with embeddings.engine.begin() as conn:  # a store created before the column existed
        conn.execute(text("ALTER TABLE embedding_versions DROP COLUMN ingest_seq"))
    embeddings = EmbeddingStore(store_url)
    v = embeddings.create_version("mf", 10.0, np.ones((2, 4)), np.ones((3, 4)),
                                  hyper_parameters={}, metrics={}, ingest_seq=42)
    old = embeddings.create_version("mf", 10.0, np.ones((2, 4)), np.ones((3, 4)),
                                    hyper_parameters={}, metrics={})
    assert embeddings.get_version(v).ingest_seq == 42
    assert embeddings.get_version(old).ingest_seq is None
    embeddings.engine.dispose()


def test_live_transactions_exclude_each_other(store_url: str) -> None:
    embeddings = EmbeddingStore(store_url)
    inside, release, order = threading.Event(), threading.Event(), []

    def hold() -> None:
        with embeddings.live_transaction():
            order.append("first")
            inside.set()
            assert release.wait(30)

    def follow() -> None:
        with embeddings.live_transaction():
            order.append("second")

    first = threading.Thread(target=hold)
    first.start()
    assert inside.wait(30)
    second = threading.Thread(target=follow)
    second.start()
    second.join(1.0)
    assert second.is_alive() and order == ["first"]
    release.set()
    first.join(30)
    second.join(30)
    assert order == ["first", "second"]
    embeddings.engine.dispose()
