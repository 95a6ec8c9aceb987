"""Consumer-group rebalances against the real broker: revokes with batches in flight, a member
joining mid-stream, a restart while a SIGKILLed member is still in the group."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from store.graph import GraphStore, WriteResult
from stream.consumer import IngestLoop, IngestStats, make_consumer
from stream.events import Event
from stream.producer import EventProducer
from stream.synthetic import generate
from tests.integration.helpers import (
    committed_offsets,
    end_offsets,
    ingest_process,
    new_group,
    produce,
)

pytestmark = pytest.mark.integration


class Member(threading.Thread):
    """One ingest loop of a group, on its own thread with its own consumer."""

    def __init__(self, bootstrap: str, topic: str, group: str, store: GraphStore,
                 **kwargs: object) -> None:
        super().__init__(daemon=True)
        # the smallest poll interval: the broker holds a first JoinGroup about that long
        self.consumer = make_consumer(bootstrap, topic, group, max_poll_interval_ms=1000)
        self.loop = IngestLoop(self.consumer, store, join_grace_s=30.0,
                               **kwargs)  # type: ignore[arg-type]
        self.stats: IngestStats | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.stats = self.loop.run()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.consumer.close(autocommit=False)

    def result(self, timeout_s: float = 90) -> IngestStats:
        """Stop the loop (it finishes and commits the batches in hand) and wait for it."""
        self.loop.stop()
        self.join(timeout_s)
        assert not self.is_alive(), "the ingest loop did not finish"
        assert self.error is None, repr(self.error)
        assert self.stats is not None
        return self.stats


def _wait_for_rows(store: GraphStore, rows: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while store.counts()["interactions"] < rows:
        assert time.monotonic() < deadline, "ingest made no progress"
        time.sleep(0.05)


def _assert_stored_once_and_committed(
    store: GraphStore, events: list[Event], members: tuple[IngestStats, ...], bootstrap: str,
    topic: str, group: str,
) -> None:
    """Every event stored by exactly one member, none twice, and all offsets committed."""
    assert sum(m.duplicates for m in members) == 0, [m.summary() for m in members]
    assert sum(m.stored for m in members) == len(events) == store.counts()["interactions"]
    assert store.event_ids() == {e.event_id for e in events}
    assert committed_offsets(bootstrap, topic, group) == end_offsets(bootstrap, topic)
    store.engine.dispose()


def _slow(seconds: float):  # type: ignore[no-untyped-def]
    def on_batch(_: WriteResult) -> None:
        time.sleep(seconds)  # an update hook that keeps batches in flight

    return on_batch


def test_revoke_with_batches_in_flight_commits_them_before_the_partitions_move(
    broker, tmp_path, topic_name
):
    events = list(generate(n_events=3000, seed=21).events())
    produce(broker.bootstrap, topic_name, events, partitions=4)
    store = GraphStore(f"sqlite:///{tmp_path / 'store.db'}")
    group = new_group()
    first = Member(broker.bootstrap, topic_name, group, store, batch_size=50,
                   on_batch=_slow(0.1))
    first.start()
    _wait_for_rows(store, 300)
    second = Member(broker.bootstrap, topic_name, group, store, batch_size=50)
    second.start()
    _wait_for_rows(store, len(events))
    a, b = first.result(), second.result()
    # the revoke found batches in flight (the slow hook), stored them and committed their
    # offsets before the partitions moved, so the new owner started right after them
    assert first.loop.rebalance is not None and first.loop.rebalance.commits >= 1
    assert b.consumed > 0, "the second member never got a partition"
    _assert_stored_once_and_committed(store, events, (a, b), broker.bootstrap, topic_name, group)


def test_second_member_joining_a_live_stream_shares_the_work_once(broker, tmp_path, topic_name):
    events = list(generate(n_events=4000, seed=22).events())
    produce(broker.bootstrap, topic_name, events[:500], partitions=4)
    store = GraphStore(f"sqlite:///{tmp_path / 'store.db'}")
    group = new_group()

    def stream() -> None:  # the rest arrives while the members run, 600 events/s for 6 s
        with EventProducer(broker.bootstrap, topic_name) as producer:
            producer.send_all(events[500:], rate=600)

    producing = threading.Thread(target=stream, daemon=True)
    first = Member(broker.bootstrap, topic_name, group, store, batch_size=100)
    first.start()
    producing.start()
    _wait_for_rows(store, 500)
    second = Member(broker.bootstrap, topic_name, group, store, batch_size=100)
    second.start()
    producing.join(60)
    _wait_for_rows(store, len(events))
    a, b = first.result(), second.result()
    assert b.consumed > 0 and a.consumed > 500, (a.summary(), b.summary())
    _assert_stored_once_and_committed(store, events, (a, b), broker.bootstrap, topic_name, group)


def test_restart_while_the_killed_member_is_still_in_the_group(broker, tmp_path, topic_name):
    events = list(generate(n_events=5000, seed=23).events())
    produce(broker.bootstrap, topic_name, events, partitions=4)
    malformed = [b"not json %d" % k for k in range(25)] + [
        b'{"user_id": "u%d", "item_id": "i", "ts": "yesterday"}' % k for k in range(25)
    ]
    with EventProducer(broker.bootstrap, topic_name) as producer:
        for k, raw in enumerate(malformed):
            producer.send_raw(raw, key=b"bad-%d" % k)  # keys spread them over the partitions
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    store = GraphStore(store_url)
    group = new_group()
    killed = ingest_process(broker.bootstrap, topic_name, group, store_url, "--batch-size", "200",
                            "--no-update")
    deadline = time.monotonic() + 60
    while store.counts()["interactions"] < 600:
        assert killed.poll() is None, killed.stderr.read() if killed.stderr else ""
        assert time.monotonic() < deadline, "ingest made no progress"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)  # no LeaveGroup: it stays a member until its session ends
    killed.wait()
    assert store.counts()["interactions"] < len(events)

    restart = ingest_process(broker.bootstrap, topic_name, group, store_url, "--idle-exit", "2",
                             "--no-update")
    out, err = restart.communicate(timeout=120)
    assert restart.returncode == 0, err
    assert "failed on_partitions_revoked" not in err, err
    assert store.event_ids() == {e.event_id for e in events}
    assert store.counts()["interactions"] == len(events)
    assert {row["raw"] for row in store.dead_letter_rows(limit=200)} == set(malformed)
    assert committed_offsets(broker.bootstrap, topic_name, group) == end_offsets(
        broker.bootstrap, topic_name
    )
    store.engine.dispose()
