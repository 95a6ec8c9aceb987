"""Consumer lag of the ingest loop: high watermark minus position, with no broker request."""

from __future__ import annotations

import uuid

import pytest
from kafka import TopicPartition
from kafka.errors import IllegalStateError

from store.graph import GraphStore
from stream.consumer import IngestLoop, make_consumer
from stream.lag import LagMeter
from stream.synthetic import generate
from tests.integration.helpers import POLL_INTERVAL_MS, produce

A, B = TopicPartition("events", 0), TopicPartition("events", 1)


class WatermarkConsumer:
    """Answers highwater/position from dicts; counts position() calls (they may cost I/O)."""

    def __init__(self, high: dict, pos: dict) -> None:
        self.high, self.pos, self.position_calls = high, pos, 0

    def assignment(self) -> set:
        return set(self.high)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.high[tp]

    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int | None:
        assert timeout_ms == 0, "position() must never wait inside the poll loop"
        self.position_calls += 1
        if tp not in self.pos:
            raise IllegalStateError("Partition is not assigned")
        return self.pos[tp]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lag_is_highwater_minus_position_of_fetched_partitions_only() -> None:
    consumer = WatermarkConsumer({A: 10, B: None}, {A: 4, B: 0})
    meter = LagMeter(consumer, clock=Clock())  # type: ignore[arg-type]
    assert meter.measure() == {0: 6}
    # B was never fetched from: its position is not even asked for
    assert consumer.position_calls == 1


def test_lag_is_measured_at_most_every_interval_but_forced_at_the_end() -> None:
    clock = Clock()
    consumer = WatermarkConsumer({A: None}, {A: 0})
    meter = LagMeter(consumer, interval_s=0.5, clock=clock)  # type: ignore[arg-type]
    assert meter.measure() is None  # nothing fetched yet: stays due
    consumer.high[A] = 7
    assert meter.measure() == {0: 7}  # the first fetch is reported at once
    consumer.pos[A] = 7
    clock.now = 0.4
    assert meter.measure() is None
    assert meter.measure(force=True) == {0: 0}
    clock.now = 0.95
    assert meter.measure() == {0: 0}


def test_a_partition_revoked_meanwhile_is_skipped() -> None:
    consumer = WatermarkConsumer({A: 5, B: 9}, {A: 5})  # B's position() raises
    assert LagMeter(consumer).measure() == {0: 0}  # type: ignore[arg-type]


@pytest.mark.integration
def test_ingest_loop_reports_lag_until_caught_up(broker, tmp_path, topic_name) -> None:  # type: ignore[no-untyped-def]
    events = list(generate(n_events=1500, seed=41).events())
    produce(broker.bootstrap, topic_name, events, partitions=2)
    store = GraphStore(f"sqlite:///{tmp_path / 'lag.db'}")
    # a fresh group per test: the local broker wedges a group a consumer left mid-join
    consumer = make_consumer(broker.bootstrap, topic_name, f"lag-{uuid.uuid4().hex[:8]}",
                             max_poll_interval_ms=POLL_INTERVAL_MS)
    seen: list[dict[int, int]] = []
    loop = IngestLoop(consumer, store, batch_size=100, idle_exit_s=1.5, join_grace_s=30.0,
                      on_lag=seen.append)
    try:
        stats = loop.run()
    finally:
        consumer.close(autocommit=False)
        store.engine.dispose()
    assert stats.consumed == len(events)
    assert seen, "no lag was ever measured"
    totals = [sum(lags.values()) for lags in seen]
    # the first measurement follows the first fetch of 100 records, far from the log end
    assert totals[0] > 0 and max(totals) <= len(events)
    assert all(set(lags) <= {0, 1} for lags in seen)
    assert seen[-1] == {0: 0, 1: 0} and stats.lag == 0
