"""Helpers for integration tests: produce to the real broker, run `streamrec ingest`."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterable

from store.graph import GraphStore
from stream.consumer import IngestLoop, IngestStats, make_consumer
from stream.events import Event
from stream.producer import EventProducer, ensure_topic

POLL_INTERVAL_MS = 2000  # the local broker's first JoinGroup waits about this long


def new_group(prefix: str = "g") -> str:
    """A fresh consumer group name (the local broker wedges a group a consumer left mid-join)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def produce(bootstrap: str, topic: str, events: Iterable[Event], partitions: int = 4) -> int:
    ensure_topic(bootstrap, topic, partitions)
    with EventProducer(bootstrap, topic) as producer:
        return producer.send_all(events)


def produce_raw(bootstrap: str, topic: str, values: list[bytes | None]) -> None:
    ensure_topic(bootstrap, topic, 1)
    with EventProducer(bootstrap, topic) as producer:
        for v in values:
            producer.send_raw(v, key=b"k")


def ingest_in_process(
    bootstrap: str, topic: str, group: str, store: GraphStore, **kwargs: object
) -> IngestStats:
    consumer = make_consumer(bootstrap, topic, group, max_poll_interval_ms=POLL_INTERVAL_MS)
    loop = IngestLoop(consumer, store, idle_exit_s=3.0, join_grace_s=30.0, **kwargs)  # type: ignore[arg-type]
    try:
        return loop.run()
    finally:
        consumer.close(autocommit=False)


def ingest_process(
    bootstrap: str, topic: str, group: str, store_url: str, *args: str
) -> subprocess.Popen[str]:
    """`streamrec ingest` as a child process (stdout/stderr captured as text)."""
    env = {
        **os.environ,
        "STREAMREC_BOOTSTRAP": bootstrap,
        "STREAMREC_STORE": store_url,
        "STREAMREC_KAFKA_MAX_POLL_INTERVAL_MS": str(POLL_INTERVAL_MS),
    }
    cmd = [sys.executable, "-m", "streamrec.cli", "ingest", "--topic", topic, "--group", group,
           *args]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def committed_offsets(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    """The group's committed offset per partition of ``topic``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        out = {}
        for p in sorted(partitions):
            off = consumer.committed(TopicPartition(topic, p))
            out[p] = -1 if off is None else off
        return out
    finally:
        consumer.close(autocommit=False)


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Offset after the last message of each partition, found by reading them all.

    (The local broker's ListOffsets answer lags behind after several produce batches, so the
    log end is measured by reading rather than asked for.)
    """
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=2000, fetch_max_wait_ms=50)
    try:
        ends: dict[int, int] = {}
        for msg in consumer:
            ends[msg.partition] = max(ends.get(msg.partition, 0), msg.offset + 1)
        return ends
    finally:
        consumer.close()
