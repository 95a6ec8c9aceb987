"""The revoke listener without a broker: what it commits, and what it must not commit later."""

from __future__ import annotations

import threading
import time

import pytest
from kafka.future import Future

from store.graph import GraphStore, WriteResult
from stream.consumer import IngestLoop
from tests.stream.test_consumer import TP, ListConsumer, _values


class RebalancingConsumer(ListConsumer):
    """Owns one partition from its first poll; at poll ``revoke_at`` it runs the listener's
    revoke inside poll(), as kafka-python 3 does, and the partition moves to another member."""

    def __init__(self, values: list[bytes], revoke_at: int) -> None:
        super().__init__(values)
        self.revoke_at, self.polls = revoke_at, 0
        self.owned: set = set()
        self.listener = None
        self.async_commits: list[dict] = []

    def subscription(self) -> set:
        return {TP.topic}

    def subscribe(self, topics: list[str], listener: object) -> None:
        self.listener = listener

    def assignment(self) -> set:
        return set(self.owned)

    def commit_async(self, offsets: dict) -> Future:
        self.async_commits.append({tp: o.offset for tp, o in offsets.items()})
        return Future().success(None)  # an answered commit: awaiting it returns at once

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        self.polls += 1
        if self.polls == 1:
            self.owned = {TP}
        if self.polls == self.revoke_at:
            revoke = self.listener.on_partitions_revoked({TP})  # type: ignore[attr-defined]
            with pytest.raises(StopIteration):
                revoke.send(None)  # the coroutine completes without waiting on the IO loop
            self.owned = set()
            return {}
        return super().poll(timeout_ms, max_records) if self.owned else {}


def test_revoke_commits_what_was_stored_in_time_and_never_a_moved_partition_later() -> None:
    consumer = RebalancingConsumer(_values(4), revoke_at=3)
    store = GraphStore("sqlite://")
    release = threading.Event()
    batches = 0

    def on_batch(_: WriteResult) -> None:
        nonlocal batches
        batches += 1
        if batches == 1:
            time.sleep(0.1)  # still in flight at the revoke, finished within the drain
        else:
            release.wait(5)  # stuck beyond the drain timeout

    loop = IngestLoop(consumer, store, batch_size=2, idle_exit_s=0, join_grace_s=0,
                      on_batch=on_batch, revoke_drain_s=0.5)
    threading.Timer(1.0, release.set).start()
    stats = loop.run()
    # the first batch was stored and committed before the partition moved ...
    assert consumer.async_commits == [{TP: 2}]
    # ... the second was stored after it moved: the new owner's offsets are not touched
    assert consumer.commits == []
    assert stats.stored == 4 == store.counts()["interactions"] and stats.batches == 2
