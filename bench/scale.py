"""Scale bench (issue 14): store ingest, full-history snapshot, a LightGCN epoch and
the live updater's start-up on its version at N synthetic events, serve start-up and
`recommend` latency at N items, each with the process's peak RSS.

    python bench/scale.py [--events 200000] [--store postgresql+psycopg://...] [--out PATH]
                          [--serve-items 100000]

The synthetic stream (stream/synthetic.py) is written with ``GraphStore.write_batch`` in
batches of ``--batch`` events: the ingest rate is the store write alone, without Kafka
(bench/ingest.py measures the consumer path). The snapshot is read by the columnar path
(store/columnar.py) and by the old row-by-row path, whose ratio is the in-process
reference. The updater start-up runs in a fresh process on the SQLite store, with the
neighbour buffers a retrain publishes and, as the reference, without them (the
full-history path of older versions). Always runs on a fresh SQLite file; with
``--store`` also on PostgreSQL (in a fresh schema, dropped afterwards). ``--events
10000000`` is the issue's full run. Writes the table to ``docs/benchmarks.md``.

Serving (:func:`run_serving`, ``--serve-items``, 0 to skip; the issue's figure is at 1M): a
SQLite store from bench/query_latency.py (random Gaussian vectors, the ANN worst case), the
start-up of a first API worker (``QueryService.refresh``: loads the version and builds the
HNSW index, publishing it to a shared ``IndexCache``) against that of the next ones (the same,
reading the index back; from 500k items an IVF index, see store/ann.py), and ``recommend``
p50/p99 in-process on the read-back index
(bench/api_load.py measures it over HTTP).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import resource
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import query_latency  # bench/ is on sys.path when this script runs
from sqlalchemy import create_engine, text

from models import LightGCN
from models.graph_ops import unique_edges
from store.ann import search_on_calling_threads
from store.ann_cache import IndexCache
from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.synthetic import generate
from streamrec.live import LiveUpdater
from streamrec.queries import QueryService
from streamrec.retrain import neighbour_buffers


def peak_rss_mib() -> float:
    """The process's peak resident set so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_store(
    label: str,
    url: str,
    stream,
    batch: int,
    rows: list[tuple[str, ...]],  # type: ignore[no-untyped-def]
    *,
    train: bool,
    reference_rows: int = 2_000_000,
) -> None:
    """Ingest, snapshot (new and old path) and optionally one LightGCN epoch on ``url``."""
    store = GraphStore(url)
    first = len(rows)
    events = stream.events()  # drawn a batch at a time: 10M Event objects would be ~4 GiB
    total = len(stream.user)
    tenth = max(1, total // 10)
    rates: list[float] = []  # events/s of each tenth of the stream, to see tables growing
    written, dt, tenth_dt, mark_at = 0, 0.0, 0.0, 0
    while chunk := list(itertools.islice(events, batch)):
        started = time.perf_counter()  # the write alone, not drawing the events
        store.write_batch(chunk)
        took = time.perf_counter() - started
        dt, tenth_dt, written = dt + took, tenth_dt + took, written + len(chunk)
        if written - mark_at >= tenth or written == total:
            rates.append((written - mark_at) / tenth_dt)
            tenth_dt, mark_at = 0.0, written
    rows.append(
        (
            label,
            "ingest (store write, no Kafka)",
            f"{written / dt:,.0f} events/s (first tenth {rates[0]:,.0f}, last "
            f"{rates[-1]:,.0f}, slowest {min(rates):,.0f})",
            f"{peak_rss_mib():,.0f}",
        )
    )
    start = time.perf_counter()
    graph = store.snapshot()
    new = time.perf_counter() - start
    rows.append(
        (
            label,
            "snapshot, columnar",
            f"{graph.num_edges / new:,.0f} rows/s",
            f"{peak_rss_mib():,.0f}",
        )
    )
    if graph.num_edges <= reference_rows:  # 10M rows of Python tuples: minutes and GiB
        start = time.perf_counter()
        old = store._edges(None, fast=False)
        ref = time.perf_counter() - start
        assert old.num_edges == graph.num_edges
        rows.append(
            (
                label,
                "snapshot, row by row (reference)",
                f"{graph.num_edges / ref:,.0f} rows/s ({ref / new:.1f}x slower)",
                f"{peak_rss_mib():,.0f}",
            )
        )
        del old
    if train:
        start = time.perf_counter()
        model = LightGCN(epochs=1, progress=False).fit(graph)
        took = time.perf_counter() - start
        config, edges = model._config(), len(unique_edges(graph)[0])
        rows.append(
            (
                label,
                "LightGCN, 1 epoch",
                f"{took:,.1f} s ({-(-edges // config.epoch_batch_size(edges))} steps of "
                f"{config.epoch_batch_size(edges):,} edges, lr {config.epoch_lr(edges):.2g})",
                f"{peak_rss_mib():,.0f}",
            )
        )
        del graph
        run_updater_startup(label, url, store, model, rows)
    store.engine.dispose()
    for row in rows[first:]:
        print(" | ".join(row), flush=True)


def _updater_ready(url: str) -> tuple[float, float, int]:
    """In a fresh process: seconds from a new LiveUpdater's first sync on the active version
    to its return (buffers restored or rebuilt, the unseen events folded in, their overlay
    rows written), the process's peak RSS (MiB) and the events it replayed."""
    graph = GraphStore(url)
    live = LiveUpdater(graph, EmbeddingStore(graph.engine), device="cpu")
    start = time.perf_counter()
    live.sync()
    seconds = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork + exec
    status = Path("/proc/self/status").read_text().splitlines()
    hwm = next(float(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return seconds, hwm / 1024, live.stats.replayed_events


def run_updater_startup(
    label: str, url: str, store: GraphStore, model: LightGCN, rows: list[tuple[str, ...]],
    *, unseen: int = 1_000, repeats: int = 2,
) -> None:
    """Updater start-up on a LightGCN version (``model``) that saw all but the newest
    ``unseen`` stored events: published with the neighbour buffers a retrain builds, then as
    a version without them (the reference: the history up to the cutoff read and buffered
    again, as every start did before). Each start runs in a fresh process, ``repeats``
    times (the fastest is shown: the machine is shared)."""
    seq = store.ingest_seq() - unseen
    seen = store.snapshot(seq=seq)
    users, items = model.user_embeddings().numpy(), model.item_embeddings().numpy()
    start = time.perf_counter()
    buffers = neighbour_buffers(seen, users.shape[1])
    build = time.perf_counter() - start
    assert buffers is not None
    embeddings = EmbeddingStore(store.engine)
    cutoff = float(seen.ts.max())
    del seen
    figures = []
    for blob in (buffers, None):
        version = embeddings.create_version(
            "lightgcn", cutoff, users, items, hyper_parameters={}, metrics={},
            ingest_seq=seq, neighbour_buffers=blob)
        embeddings.activate(version)
        runs = []
        for _ in range(repeats):
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                runs.append(pool.apply(_updater_ready, (url,)))
            assert runs[-1][2] == unseen, runs[-1]
        figures.append(min(runs))
    (new, new_rss, _), (old, old_rss, _) = figures
    rows.append((label, "updater start-up, stored buffers (fresh process)",
                 f"{new:,.2f} s ({unseen:,} unseen events folded in; buffers "
                 f"{len(buffers) / 2**20:,.1f} MiB, built in the retrain in {build:,.1f} s)",
                 f"{new_rss:,.0f}"))
    rows.append((label, "updater start-up, full history (reference)",
                 f"{old:,.2f} s ({old / new:.1f}x slower)", f"{old_rss:,.0f}"))


def run_serving(items: int, rows: list[tuple[str, ...]], *, users: int = 20_000,
                events_per_user: int = 5, queries: int = 2000, seed: int = 0) -> None:
    """Serve start-up (index built vs read back) and in-process ``recommend`` p50/p99 at
    ``items`` items, on a fresh SQLite store with ``users`` users."""
    first = len(rows)
    search_on_calling_threads()  # as every API worker does (streamrec.api.create_app)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        graph = query_latency.build(Path(tmp) / "serve.db", users, items, events_per_user, seed)
        print(f"built the serving store ({items:,} items, {users:,} users) in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        embeddings = EmbeddingStore(graph.engine)
        timings = []
        for _ in range(2):  # the first worker builds and publishes, the second reads it back
            service = QueryService(graph, embeddings, index_cache=IndexCache(Path(tmp) / "ix"))
            start = time.perf_counter()
            service.refresh()
            timings.append(time.perf_counter() - start)
        index = service.served.index
        size = sum(f.stat().st_size for f in (Path(tmp) / "ix").glob("*.faiss")) / 2**20
        label = f"{items:,} items, {index.kind}"
        if index.build_recall is not None:  # HNSW or IVF: how close to exact it serves
            label += (f" (probe recall@10 {index.build_recall:.2f}"
                      f"{f', nprobe {index.nprobe}' if index.nprobe else ''})")
        rows.append(("SQLite", f"serve start-up, first worker (builds the index), {label}",
                     f"{timings[0]:,.1f} s", f"{peak_rss_mib():,.0f}"))
        rows.append(("SQLite", "serve start-up, next workers (read the shared index back)",
                     f"{timings[1]:,.1f} s ({timings[0] / timings[1]:,.0f}x faster; "
                     f"{size:,.0f} MiB file, mapped)", f"{peak_rss_mib():,.0f}"))
        picks = np.random.default_rng(seed).integers(1, users, queries)
        p50, p99 = query_latency.percentiles(lambda u: service.recommend(u, k=10),
                                             [f"u{u}" for u in picks])
        rows.append(("SQLite", f"recommend k=10 in-process, {label} (target p99 <= 5 ms)",
                     f"p50 {p50:.2f} ms, p99 {p99:.2f} ms", f"{peak_rss_mib():,.0f}"))
        graph.engine.dispose()
    for row in rows[first:]:
        print(" | ".join(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=20_000, help="events per write_batch")
    parser.add_argument("--store", default=None, help="a PostgreSQL URL to run on as well")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--serve-items", type=int, default=100_000,
                        help="catalogue of the serving rows (0: skip them; issue: 1000000)")
    parser.add_argument("--reference-rows", type=int, default=2_000_000,
                        help="largest snapshot also read row by row, the reference")
    args = parser.parse_args()

    start = time.perf_counter()
    stream = generate(n_events=args.events, seed=args.seed)
    print(
        f"generated {args.events:,} events in {time.perf_counter() - start:.1f} s "
        f"({stream.user.max() + 1:,} users, {stream.item.max() + 1:,} items)",
        flush=True,
    )
    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory() as tmp:
        run_store("SQLite", f"sqlite:///{tmp}/scale.db", stream, args.batch, rows, train=True,
                  reference_rows=args.reference_rows)
    if args.store:
        schema = f"scale_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.store, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        sep = "&" if "?" in args.store else "?"
        try:
            run_store(
                "PostgreSQL",
                f"{args.store}{sep}options=-csearch_path%3D{schema}",
                stream,
                args.batch,
                rows,
                train=False,
                reference_rows=args.reference_rows,
            )
        finally:
            with admin.connect() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()
    if args.serve_items:
        run_serving(args.serve_items, rows, seed=args.seed)

    table = ["| store | step | figure | peak RSS (MiB) |", "| --- | --- | --- | --- |"]
    table += [f"| {' | '.join(row)} |" for row in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Benchmarks\n\n## Scale (bench/scale.py)\n\n"
        f"`python bench/scale.py --events {args.events}"
        f"{' --store POSTGRES_URL' if args.store else ''}"
        f" --serve-items {args.serve_items}` (batches of {args.batch:,}; "
        "ingest is the store write alone, without Kafka; peak RSS is the process's so far, "
        "so it only grows down the table).\n\n" + "\n".join(table) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
