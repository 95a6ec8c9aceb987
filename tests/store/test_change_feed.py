"""ChangeFeed wakes a reader when another connection commits: LISTEN/NOTIFY on PostgreSQL,
``PRAGMA data_version`` on a SQLite file; real databases."""

from __future__ import annotations

import time

from store.change_feed import ChangeFeed
from store.embeddings import EmbeddingStore
from store.engine import make_engine
from store.graph import GraphStore
from stream.events import Event


def test_a_commit_wakes_the_feed_at_once(store_url: str) -> None:
    writer = GraphStore(store_url)
    EmbeddingStore(writer.engine)  # every watched table exists
    reader = make_engine(store_url)
    feed = ChangeFeed.open(reader)
    assert feed is not None
    try:
        assert feed.wait(0.2) is False  # nothing committed yet
        started = time.monotonic()
        writer.write_batch([Event.create("u1", "i1", 1_700_000_000.0)])
        assert feed.wait(5.0) is True
        assert time.monotonic() - started < 1.0
        for t in range(3):  # a burst of commits: one wake-up, then quiet again
            writer.write_batch([Event.create("u2", f"i{t}", 1_700_000_100.0 + t)])
        assert feed.wait(5.0) is True
        time.sleep(0.1)
        feed.wait(0.1)  # SQLite may see the burst's last commit separately
        assert feed.wait(0.3) is False
    finally:
        feed.close()
        reader.dispose()
        writer.engine.dispose()


def test_no_feed_for_an_in_memory_store() -> None:
    assert ChangeFeed.open(make_engine("sqlite://")) is None
