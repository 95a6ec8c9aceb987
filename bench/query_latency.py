"""Query latency of `recommend` and `similar` at catalogue scale (target: recommend p99 <= 5 ms).

    python bench/query_latency.py [--items 100000] [--users 20000] [--queries 2000]

Builds a SQLite store with a synthetic history and an active embedding version over
``--items`` items (dim 64; ``--vectors``: random Gaussian, the default, or a trained
LightGCN), then times the Python API the CLI and HTTP API
call (QueryService), one query at a time, after one warm-up pass. Prints p50/p99 in ms for
exact (FAISS flat) and HNSW indices, and the FAISS-vs-numpy top-10 agreement.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from store.ann import ItemIndex
from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from store.item_metadata import ItemMetadata
from stream.events import Event
from stream.item_metadata import ItemRecord
from stream.synthetic import generate
from streamrec.queries import QueryService
from streamrec.retrain import RetrainPlan, retrain

VECTORS = ("lightgcn", "trend", "gaussian")


def build(path: Path, users: int, items: int, events_per_user: int, seed: int,
          vectors: str = "gaussian", epochs: int = 3, content: bool = False) -> GraphStore:
    """A SQLite store over ``items`` items and ``users`` users (ids ``i<N>``, ``u<N>``) with an
    active version (dim 64).

    ``vectors="trend"``: the same store served by the trend ranker over that LightGCN (its
    parameters chosen on the newest 10% of events), as ``streamrec retrain`` publishes it.
    ``vectors="lightgcn"``: the seeded synthetic stream (stream.synthetic, ``events_per_user``
    events per user) plus one event by a random user for each item it never touched, and a
    LightGCN trained on it for ``epochs`` epochs through ``streamrec.retrain``, as a
    deployment serves. ``"gaussian"``: uniform random histories and random Gaussian vectors,
    the worst case for an ANN index (no structure to exploit). ``content``: items' metadata
    is imported before the retrain (each item's planted taste as its one tag, a release year
    in 1990-2019), so the trend ranker scores its content terms too.
    """
    if vectors not in VECTORS:
        raise ValueError(f"vectors must be one of {VECTORS}, got {vectors!r}")
    rng = np.random.default_rng(seed)
    graph = GraphStore(f"sqlite:///{path}")
    store = EmbeddingStore(graph.engine)
    if vectors in ("lightgcn", "trend"):
        stream = generate(n_events=users * events_per_user, n_users=users, n_items=items,
                          seed=seed)
        evs = list(stream.events())
        untouched = np.setdiff1d(np.arange(items), stream.item)
        end = float(stream.ts.max())
        evs += [Event.create(f"u{int(u)}", f"i{int(i)}", end + 1 + n) for n, (u, i) in
                enumerate(zip(rng.integers(0, users, len(untouched)), untouched, strict=True))]
        for lo in range(0, len(evs), 50_000):
            graph.write_batch(evs[lo: lo + 50_000])
        if content:
            ItemMetadata(graph).write([ItemRecord(f"i{i}", 1990 + i % 30, (f"taste{t}",))
                                       for i, t in enumerate(stream.item_topic.tolist())])
        retrain(graph, store, RetrainPlan(model=vectors, epochs=epochs, dim=64,
                                          valid_fraction=0.1 if vectors == "trend" else 0,
                                          train_updater=False, progress=False, seed=seed))
        return graph
    # every item appears once so the id space has `items` items; then user histories
    batch = [Event.create("u0", f"i{i}", 1_700_000_000 + i) for i in range(items)]
    graph.write_batch(batch)
    evs = []
    for u in range(users):
        for i in rng.integers(0, items, events_per_user):
            evs.append(Event.create(f"u{u}", f"i{int(i)}", 1_700_100_000 + len(evs)))
        if len(evs) > 50_000:
            graph.write_batch(evs)
            evs = []
    graph.write_batch(evs)
    counts = graph.counts()
    v = store.create_version(
        "bench", 2e9,
        rng.standard_normal((counts["users"], 64)).astype(np.float32),
        rng.standard_normal((counts["items"], 64)).astype(np.float32),
        hyper_parameters={}, metrics={},
    )
    store.activate(v)
    return graph


def percentiles(fn, arg_list) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    for a in arg_list[:100]:
        fn(a)  # warm-up
    times = []
    for a in arg_list:
        t = time.perf_counter()
        fn(a)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--events-per-user", type=int, default=20)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vectors", default="gaussian", choices=VECTORS,
                    help="the active version: random Gaussian vectors (the ANN worst case), "
                         "a LightGCN trained on the synthetic stream, or the trend ranker "
                         "over it (see build())")
    ap.add_argument("--content", action="store_true",
                    help="with --vectors trend: import items' metadata first (see build())")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        graph = build(Path(tmp) / "q.db", args.users, args.items, args.events_per_user,
                      args.seed, args.vectors, content=args.content)
        print(f"built store: {graph.counts()} in {time.perf_counter() - t:.1f}s")
        fitted = EmbeddingStore(graph.engine).active_version()
        if fitted is not None and "fitted" in fitted.hyper_parameters:
            print(f"ranker chosen on validation: {fitted.hyper_parameters['fitted']}")
        users = [f"u{u}" for u in rng.integers(1, args.users, args.queries)]
        items = [f"i{i}" for i in rng.integers(0, args.items, args.queries)]
        for label, threshold in (("exact (FAISS flat)", 10**9), ("HNSW", 1)):
            service = QueryService(graph, EmbeddingStore(graph.engine))
            service.refresh()
            s = service.served
            s.index = ItemIndex(s.snapshot.items[s.item_rows], exact_threshold=threshold)
            p50, p99 = percentiles(lambda u, sv=service: sv.recommend(u, k=10), users)
            print(f"recommend k=10, {args.items:,} items, {label:18s}: p50 {p50:.2f} ms, "
                  f"p99 {p99:.2f} ms (target p99 <= 5 ms)")
            p50, p99 = percentiles(lambda i, sv=service: sv.similar(i, k=10), items)
            print(f"similar   k=10, {args.items:,} items, {label:18s}: p50 {p50:.2f} ms, "
                  f"p99 {p99:.2f} ms")
        ranker = s.ranker
        if args.content and ranker is not None:
            # the synthetic validation may choose the personal terms' weights 0; time them
            # with the weights MovieTweetings-100K chose, so that every term is scored
            ranker.top.params = replace(ranker.top.params, covis_weight=0.2, tag_weight=0.8,
                                        age_weight=0.4)
            ranker.top.refresh()
            p50, p99 = percentiles(lambda u, sv=service: sv.recommend(u, k=10), users)
            print(f"recommend k=10, {args.items:,} items, trend ranker with co-visitation "
                  f"0.2, tags 0.8, release age 0.4: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        q = s.snapshot.users[:200]
        _, exact = ItemIndex(s.snapshot.items, backend="numpy").search(q, 10)
        _, flat = ItemIndex(s.snapshot.items, exact_threshold=10**9).search(q, 10)
        _, hnsw = ItemIndex(s.snapshot.items, exact_threshold=1).search(q, 10)
        recall = np.mean([len(set(h) & set(e)) / 10 for h, e in zip(hnsw, exact, strict=True)])
        print(f"FAISS flat vs numpy top-10 identical: {np.mean(flat == exact):.4f}; "
              f"HNSW recall@10 vs exact: {recall:.4f} ({args.vectors} vectors)")
        graph.engine.dispose()


if __name__ == "__main__":
    main()
