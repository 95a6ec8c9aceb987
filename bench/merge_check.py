"""Merge reliability: late events during a retrain, and 1 vs 2 updaters sharing a store.

    python bench/merge_check.py [--store URL] [--events 6000] [--late 200] [--seed 0]

1. Late events: a base (MF) is trained on the first half of a synthetic stream while, after
   its snapshot, ``--late`` events with times before its cutoff (each of a user of its own,
   so each is visible on its own) and the rest of the stream are stored, as Kafka delivers
   them. After the activation one live-update call runs; an event is served when its user's
   merged embedding comes from the overlay of the new base. Prints stored after the
   snapshot / served / lost (target: lost 0).
2. 1 vs 2 updaters: the rest of the stream is folded in by two LiveUpdaters, each called
   after the batches of its own half of the users (keyed as Kafka's partitions are), the
   second lagging two batches behind, each settling once the stream pauses (as their
   watchers do), then by one fresh updater from the base; prints the
   max absolute difference of the merged vectors (float32; target: within 1e-5).
   tests/integration/test_pipeline.py runs the same comparison with `streamrec ingest
   --update` processes on the real broker.

Without ``--store`` a temporary SQLite file is used; a PostgreSQL URL works too (its tables
must not exist yet: use an empty database or schema).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.events import Event
from stream.synthetic import generate
from streamrec.live import LiveUpdater
from streamrec.retrain import RetrainPlan, retrain


def _plan(seed: int, cutoff: float | None = None) -> RetrainPlan:
    return RetrainPlan(model="mf", epochs=3, dim=32, valid_fraction=0.2, seed=seed,
                       progress=False, cutoff=cutoff)


def late_events(graph: GraphStore, embeddings: EmbeddingStore, events: list[Event],
                n_late: int, seed: int) -> dict[str, int]:
    """Store late events while a retrain trains; count those the served state holds."""
    half = len(events) // 2
    cutoff = events[half - 1].ts
    rng = np.random.default_rng(seed)
    picks = rng.choice(half, n_late, replace=False)
    late = [Event.create(f"late-{k}", events[p].item_id, events[p].ts)
            for k, p in enumerate(picks)]
    result: list[object] = []
    job = threading.Thread(target=lambda: result.append(
        retrain(graph, embeddings, _plan(seed, cutoff))))
    seq_before = graph.ingest_seq()
    job.start()
    time.sleep(0.5)  # the retrain has taken its snapshot and trains
    graph.write_batch(late)
    graph.write_batch(events[half:half + len(events) // 4])
    job.join()
    info = result[0]
    # stored after the snapshot unless the retrain took it later than 0.5 s
    after_snapshot = n_late if info.ingest_seq == seq_before else 0
    live = LiveUpdater(graph, embeddings, device="cpu")
    live.sync()
    snap = embeddings.load()
    idx = graph.node_index("user", [e.user_id for e in late])
    served = sum(1 for e in late if idx.get(e.user_id) in snap.overlay_users)
    return {"late": n_late, "stored_after_snapshot": after_snapshot, "served": served,
            "lost": after_snapshot - served}


def one_vs_two(graph: GraphStore, embeddings: EmbeddingStore, rest: list[Event]) -> float:
    """Max |difference| of the merged vectors: two lagging updaters vs one."""
    a, b = (LiveUpdater(graph, embeddings, device="cpu") for _ in range(2))
    a.sync()
    b.sync()
    parts = [[e for e in rest if int(e.user_id.lstrip("u")) % 2 == p] for p in (0, 1)]
    batches = [np.array_split(np.arange(len(p)), 12) for p in parts]
    for step in range(14):
        if step < 12:
            a(graph.write_batch([parts[0][k] for k in batches[0][step]]))
        if step >= 2:
            b(graph.write_batch([parts[1][k] for k in batches[1][step - 2]]))
    for live in (a, b):  # the stream pauses: each one's watcher settles what it folded fast
        live.sync(settle=True)
    two = embeddings.load()
    LiveUpdater(graph, embeddings, device="cpu").sync()
    one = embeddings.load()
    rows = len(one.overlay_users) + len(one.overlay_items)
    print(f"  rewinds {a.stats.rewinds + b.stats.rewinds}, rebuilds "
          f"{a.stats.rebuilds + b.stats.rebuilds}, overlay rows {rows}")
    return float(max(np.abs(one.users - two.users).max(), np.abs(one.items - two.items).max()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default=None, help="store URL (default: a temporary SQLite file)")
    ap.add_argument("--events", type=int, default=6000)
    ap.add_argument("--late", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.store or f"sqlite:///{Path(tmp) / 'merge.db'}"
        graph = GraphStore(url)
        embeddings = EmbeddingStore(graph.engine)
        events = list(generate(n_events=args.events, seed=args.seed, days=10).events())
        half = len(events) // 2
        graph.write_batch(events[:half])
        retrain(graph, embeddings, _plan(args.seed))
        print(f"store {graph!r}, {args.events} synthetic events")
        print("late events during a retrain:", late_events(graph, embeddings, events,
                                                           args.late, args.seed))
        diff = one_vs_two(graph, embeddings, events[half + len(events) // 4:])
        print(f"1 vs 2 updaters: max |vector difference| {diff:.2e}")
        graph.engine.dispose()


if __name__ == "__main__":
    main()
