"""Compressed topics: events produced by an independent client (confluent-kafka, librdkafka) with
every ``compression.type`` are all stored by streamrec's consumer, on the real broker."""

from __future__ import annotations

import json

import pytest
from kafka.record.default_records import DefaultRecordBatch

from store.graph import GraphStore
from stream.consumer import IngestLoop, make_consumer
from stream.producer import ensure_topic
from tests.integration.helpers import new_group

pytestmark = pytest.mark.integration

confluent_kafka = pytest.importorskip(
    "confluent_kafka", reason="confluent-kafka is a dev dependency: pip install -e '.[dev]'"
)

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
"""compression.type -> the codec id in the record batch attributes (Kafka protocol)."""
PER_CODEC = 300
T0_MS = 1_700_000_000_000


def _produce(bootstrap: str, topic: str, codec: str) -> list[tuple[str, str, int]]:
    """PER_CODEC events with keys, headers and epoch-ms timestamps; (user, item, ms) each."""
    producer = confluent_kafka.Producer({
        "bootstrap.servers": bootstrap,
        "compression.type": codec,
        "linger.ms": 20,  # batches of many records, so compression has something to do
        "client.id": f"compression-test-{codec}",
    })
    failures: list[str] = []
    sent = []
    for k in range(PER_CODEC):
        user, item, ms = f"{codec}-u{k % 37}", f"{codec}-i{k % 11}", T0_MS + 1000 * k
        producer.produce(
            topic,
            key=user.encode(),
            value=json.dumps({"user_id": user, "item_id": item, "ts": ms}).encode(),
            headers=[("producer", b"confluent-kafka"), ("codec", codec.encode())],
            timestamp=ms,
            on_delivery=lambda err, _msg: failures.append(str(err)) if err else None,
        )
        sent.append((user, item, ms))
    assert producer.flush(30) == 0, "confluent-kafka did not deliver everything in 30 s"
    assert not failures, failures[:3]
    return sent


def test_every_compression_codec_is_consumed_and_stored(broker, tmp_path, topic_name,
                                                         monkeypatch):
    ensure_topic(broker.bootstrap, topic_name, 4)
    sent = {codec: _produce(broker.bootstrap, topic_name, codec) for codec in CODECS}
    # which codecs the consumer really decompressed: proof the broker kept them as produced
    seen: set[int] = set()
    check = DefaultRecordBatch._assert_has_codec

    def spy(self, compression_type):  # type: ignore[no-untyped-def]
        seen.add(compression_type)
        return check(self, compression_type)

    monkeypatch.setattr(DefaultRecordBatch, "_assert_has_codec", spy)

    store = GraphStore(f"sqlite:///{tmp_path / 'store.db'}")
    total = len(CODECS) * PER_CODEC
    consumer = make_consumer(broker.bootstrap, topic_name, new_group("codec"),
                             max_poll_interval_ms=1000)
    try:
        stats = IngestLoop(consumer, store, max_events=total, join_grace_s=30.0).run()
    finally:
        consumer.close(autocommit=False)
    assert (stats.consumed, stats.stored, stats.dead_letters) == (total, total, 0)
    assert seen == {CODECS[c] for c in CODECS if c != "none"}
    graph = store.snapshot()
    users, items = store.node_ids("user"), store.node_ids("item")
    stored = {(users[u], items[i], float(t)) for u, i, t in
              zip(graph.user.tolist(), graph.item.tolist(), graph.ts.tolist(), strict=True)}
    for codec, events in sent.items():
        expected = {(u, i, ms / 1000) for u, i, ms in events}
        assert expected <= stored, f"{codec}: {len(expected - stored)} events missing"
    store.engine.dispose()
