"""The ingest loop's ordering and policies, with an in-memory consumer and a real SQLite store."""

from __future__ import annotations

import threading
from collections import namedtuple

import pytest
from kafka import TopicPartition
from sqlalchemy import exc as sa_exc

from store.graph import GraphStore
from stream.consumer import IngestLoop
from stream.decoded import decode_records
from stream.events import Event
from stream.retry import RetryPolicy, Stopped

Record = namedtuple("Record", "offset value")
TP = TopicPartition("events", 0)


class ListConsumer:
    """Serves fixed records once, like a single-partition consumer; remembers commits."""

    def __init__(self, values: list[bytes | None], tp: TopicPartition = TP) -> None:
        self.records = [Record(k, v) for k, v in enumerate(values)]
        self.position = 0
        self.commits: list[dict] = []
        self.tp = tp

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        chunk = self.records[self.position : self.position + max_records]
        self.position += len(chunk)
        return {self.tp: chunk} if chunk else {}

    def assignment(self) -> set:
        return {self.tp}

    def commit(self, offsets: dict) -> None:
        self.commits.append({tp: o.offset for tp, o in offsets.items()})


class FlakyStore:
    """A real store whose first ``failures`` writes raise a connection error."""

    def __init__(self, store: GraphStore, failures: int) -> None:
        self.store, self.failures, self.calls = store, failures, 0

    def write_batch(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls <= self.failures:
            raise sa_exc.OperationalError("INSERT", {}, ConnectionError("server closed"))
        return self.store.write_batch(*args, **kwargs)


def _values(n: int) -> list[bytes]:
    return [Event.create(f"u{k}", f"i{k % 3}", 100 + k).to_json() for k in range(n)]


def test_offsets_are_committed_only_for_stored_batches(tmp_path) -> None:
    consumer = ListConsumer(_values(10))
    store = GraphStore(f"sqlite:///{tmp_path / 's.db'}")
    seen: list[int] = []
    stored_at_commit: list[int] = []
    commit = consumer.commit

    def checking_commit(offsets: dict) -> None:
        stored_at_commit.append(store.counts()["interactions"])
        commit(offsets)

    consumer.commit = checking_commit  # type: ignore[method-assign]
    loop = IngestLoop(
        consumer, store, batch_size=4, idle_exit_s=0,
        on_batch=lambda r: seen.append(store.counts()["interactions"]),
    )
    stats = loop.run()
    assert stats.consumed == 10 and stats.stored == 10 and stats.batches == 3
    committed = [c[TP] for c in consumer.commits]
    assert committed == sorted(committed) and committed[-1] == 10
    # (offsets are contiguous from 0 with one event each, so offset == events behind it)
    assert all(off <= rows for off, rows in zip(committed, stored_at_commit, strict=True))
    assert seen == [4, 8, 10]  # the update hook sees each batch's committed rows


def test_max_events_never_consumes_more() -> None:
    consumer = ListConsumer(_values(10))
    stats = IngestLoop(consumer, GraphStore("sqlite://"), batch_size=4, max_events=6).run()
    assert consumer.position == 6
    assert stats.consumed == 6 and consumer.commits[-1] == {TP: 6}


def test_database_outage_is_waited_out_not_skipped() -> None:
    consumer = ListConsumer(_values(5))
    store = GraphStore("sqlite://")
    flaky = FlakyStore(store, failures=3)
    loop = IngestLoop(consumer, flaky, idle_exit_s=0,  # type: ignore[arg-type]
                      retry=RetryPolicy(initial_s=0.01, max_delay_s=0.02))
    stats = loop.run()
    assert flaky.calls == 4 and stats.stored == 5
    assert store.counts()["interactions"] == 5 and consumer.commits == [{TP: 5}]


def test_stop_during_outage_commits_nothing() -> None:
    consumer = ListConsumer(_values(5))
    flaky = FlakyStore(GraphStore("sqlite://"), failures=10**6)
    loop = IngestLoop(consumer, flaky, retry=RetryPolicy(initial_s=0.05))  # type: ignore[arg-type]
    timer = threading.Timer(0.3, loop.stop)
    timer.start()
    stats = loop.run()  # returns once stopped, although the database never came back
    timer.join()
    assert flaky.calls >= 2 and stats.stored == 0 and stats.consumed == 5
    assert consumer.commits == []  # the batch will be redelivered


def test_retry_gives_up_only_when_told() -> None:
    def down() -> None:
        raise sa_exc.OperationalError("SELECT 1", {}, ConnectionError("refused"))

    with pytest.raises(Stopped):
        RetryPolicy(initial_s=1).call(down, should_stop=lambda: True, sleep=lambda s: None)
    with pytest.raises(sa_exc.OperationalError):
        RetryPolicy(initial_s=0, max_attempts=3).call(down, sleep=lambda s: None)


def test_other_errors_are_not_retried() -> None:
    def boom() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        RetryPolicy(initial_s=0).call(boom)


def test_decode_records_splits_good_and_bad() -> None:
    values = [*_values(2), b"nope", None]
    batch = decode_records({TP: [Record(k, v) for k, v in enumerate(values)]})
    assert len(batch.events) == 2 and batch.sources == [(0, 0), (0, 1)]
    assert [(d.offset, d.error[:20]) for d in batch.dead_letters] == [
        (2, "message is not valid"), (3, "message has no value")
    ]
    assert batch.next_offsets == {TP: 4} and batch.size == 4


def test_sqlite_bugs_are_not_mistaken_for_outages() -> None:
    import sqlite3

    from stream.retry import is_outage

    bug = sa_exc.OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: x"))
    locked = sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    assert not is_outage(bug) and is_outage(locked)
