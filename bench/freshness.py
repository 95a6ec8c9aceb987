"""Freshness: time from producing an event to the user's merged embedding reflecting it.

    python bench/freshness.py [--rate 5000] [--seconds 60] [--sample-every 25]

Starts the bundled broker, a SQLite store with an active LightGCN version (trained on a
synthetic history, with its incremental updater), and `streamrec ingest --update` as a
separate process; then produces at a steady ``--rate`` events/s for ``--seconds`` s. Every
``--sample-every``-th event is followed: it is reflected when the overlay row of its user has
``updated_at >= event ts`` (the updater stamps rows with the newest event time it folded in).
Event times are the wall clock at sending, so latency = reflection time - send time.
Prints p50/p99 (target p99 <= 1 s on 2 cores) and the achieved rates.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from sqlalchemy import select

from store import embedding_schema as es
from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.broker import LocalBroker
from stream.events import Event
from stream.producer import EventProducer, ensure_topic
from stream.synthetic import generate
from streamrec.retrain import RetrainPlan, retrain


def prepare_store(url: str, seed: int) -> tuple[GraphStore, list[str], list[str]]:
    graph = GraphStore(url)
    history = generate(n_events=60_000, seed=seed, days=20.0)
    graph.write_batch(list(history.events()))
    retrain(graph, EmbeddingStore(graph.engine),
            RetrainPlan(model="lightgcn", epochs=3, seed=seed, progress=False))
    return graph, graph.node_ids("user"), graph.node_ids("item")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=5000.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--sample-every", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=1000, help="ingest records per batch")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp, LocalBroker() as broker:
        url = f"sqlite:///{Path(tmp) / 'fresh.db'}"
        t = time.perf_counter()
        graph, users, items = prepare_store(url, args.seed)
        print(f"store ready with an active version in {time.perf_counter() - t:.0f}s")
        topic = "fresh"
        ensure_topic(broker.bootstrap, topic, 4)
        env = {**os.environ, "STREAMREC_BOOTSTRAP": broker.bootstrap, "STREAMREC_STORE": url,
               "STREAMREC_KAFKA_MAX_POLL_INTERVAL_MS": "3000",
               "STREAMREC_BATCH_SIZE": str(args.batch_size), "STREAMREC_LOG_LEVEL": "WARNING"}
        ingest = subprocess.Popen(
            [sys.executable, "-m", "streamrec.cli", "ingest", "--topic", topic, "--group",
             "fresh", "--update"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        user_index = {u: i for i, u in enumerate(users)}
        pending: dict[int, list[tuple[float, float]]] = {}  # user idx -> [(ts, sent)]
        latencies: list[float] = []
        lock = threading.Lock()
        done = threading.Event()

        def watch() -> None:
            # Ask for the pending users' rows themselves: a high-water mark on updated_at
            # would miss rows committed late (partitions are consumed at different paces),
            # and those are exactly the slow ones.
            o = es.embedding_overlay
            while not done.is_set() or pending:
                with lock:
                    waiting_users = [u for u, w in pending.items() if w]
                rows = []
                for lo in range(0, len(waiting_users), 500):
                    with graph.engine.connect() as conn:
                        rows += conn.execute(
                            select(o.c.idx, o.c.updated_at).where(
                                (o.c.kind == "user") & o.c.idx.in_(waiting_users[lo:lo + 500])
                            )
                        ).all()
                now = time.time()
                with lock:
                    for idx, updated in rows:
                        waiting = pending.get(int(idx))
                        if not waiting:
                            continue
                        left = [(ts, s) for ts, s in waiting if ts > updated]
                        latencies.extend(now - s for ts, s in waiting if ts <= updated)
                        pending[int(idx)] = left
                    if done.is_set() and time.time() > deadline_drain:
                        break
                time.sleep(0.01)

        deadline_drain = float("inf")
        watcher = threading.Thread(target=watch, daemon=True)
        # warm-up: the consumer's first group join must be done before timing starts
        with EventProducer(broker.bootstrap, topic) as producer:
            producer.send(Event.create(users[0], items[0], time.time()))
        time.sleep(8)
        watcher.start()
        sent = 0
        start = time.monotonic()
        with EventProducer(broker.bootstrap, topic, linger_ms=2) as producer:
            while time.monotonic() - start < args.seconds:
                due = start + sent / args.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                u = users[int(rng.integers(len(users)))]
                i = items[int(rng.integers(len(items)))]
                now = time.time()
                producer.send(Event.create(u, i, now))
                sent += 1
                if sent % args.sample_every == 0:
                    with lock:
                        pending.setdefault(user_index[u], []).append((now, now))
        produce_s = time.monotonic() - start
        deadline_drain = time.time() + 30
        done.set()
        watcher.join(timeout=40)
        ingest.terminate()
        out, err = ingest.communicate(timeout=60)
        missing = sum(len(v) for v in pending.values())
        lat = np.array(latencies) * 1000
        print(f"produced {sent:,} events in {produce_s:.1f}s = {sent / produce_s:,.0f} ev/s "
              f"(target {args.rate:,.0f})")
        print(out.strip().splitlines()[-1] if out.strip() else err[-500:])
        if len(lat):
            print(f"freshness over {len(lat):,} sampled events: p50 {np.percentile(lat, 50):.0f} "
                  f"ms, p99 {np.percentile(lat, 99):.0f} ms, max {lat.max():.0f} ms "
                  f"(target p99 <= 1000 ms); not reflected within 30 s after the end: {missing}")
        graph.engine.dispose()


if __name__ == "__main__":
    main()
