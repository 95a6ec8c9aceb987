"""Ingest throughput: raw kafka-python consume+decode vs end-to-end ingest into SQLite and
PostgreSQL, all in one run on the bundled local broker.

    python bench/ingest.py [--events 200000] [--postgres URL]

Prints events/s for each path and the ingest rates as a share of the raw rate
(targets: SQLite >= 50%, PostgreSQL >= 35%).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from store.graph import GraphStore
from stream.broker import LocalBroker
from stream.consumer import IngestLoop, make_consumer
from stream.producer import EventProducer, ensure_topic
from stream.synthetic import generate

POLL_MS = 2000


def raw_rate(bootstrap: str, topic: str, n: int) -> float:
    """Consume ``n`` messages with kafka-python and json-decode each; events/s after join."""
    consumer = make_consumer(bootstrap, topic, f"raw-{uuid.uuid4().hex[:6]}",
                             max_poll_interval_ms=POLL_MS)
    got, start = 0, None
    try:
        while got < n:
            records = consumer.poll(timeout_ms=200, max_records=2000)
            if records and start is None:
                start = time.perf_counter()
            for msgs in records.values():
                for m in msgs:
                    json.loads(m.value)
                got += sum(1 for _ in msgs)
        assert start is not None
        return n / (time.perf_counter() - start)
    finally:
        consumer.close(autocommit=False)


def ingest_rate(bootstrap: str, topic: str, n: int, url: str) -> float:
    store = GraphStore(url)
    consumer = make_consumer(bootstrap, topic, f"ing-{uuid.uuid4().hex[:6]}",
                             max_poll_interval_ms=POLL_MS)
    # time from the first record on, like raw_rate: the group join is not ingest work
    first = consumer.poll(timeout_ms=30_000, max_records=1)
    while not first:
        first = consumer.poll(timeout_ms=1000, max_records=1)
    for tp, msgs in first.items():
        consumer.seek(tp, msgs[0].offset)
    loop = IngestLoop(consumer, store, batch_size=5000, max_events=n)
    start = time.perf_counter()
    stats = loop.run()
    elapsed = time.perf_counter() - start
    consumer.close(autocommit=False)
    assert stats.stored == n, stats.summary()
    store.engine.dispose()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    n = args.events
    with LocalBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        topic = "bench-events"
        ensure_topic(broker.bootstrap, topic, 4)
        t0 = time.perf_counter()
        with EventProducer(broker.bootstrap, topic) as producer:
            producer.send_all(generate(n_events=n, seed=0).events())
        print(f"produced {n} events in {time.perf_counter() - t0:.1f}s")
        raw = raw_rate(broker.bootstrap, topic, n)
        print(f"raw kafka-python consume+decode: {raw:10,.0f} events/s")
        sqlite_rate = ingest_rate(broker.bootstrap, topic, n, f"sqlite:///{Path(tmp) / 'b.db'}")
        print(f"ingest into SQLite:              {sqlite_rate:10,.0f} events/s "
              f"= {sqlite_rate / raw:.0%} of raw (target >= 50%)")
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        try:
            pg_rate = ingest_rate(broker.bootstrap, topic, n,
                                  f"{args.postgres}?options=-csearch_path%3D{schema}")
            print(f"ingest into PostgreSQL:          {pg_rate:10,.0f} events/s "
                  f"= {pg_rate / raw:.0%} of raw (target >= 35%)")
        finally:
            with admin.connect() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


if __name__ == "__main__":
    main()
