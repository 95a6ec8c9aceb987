"""HTTP load on ``GET /users/{id}/recommendations`` at catalogue scale (target: p99 < 10 ms).

    python bench/api_load.py [--items 100000] [--users 20000] [--requests 4000]
                             [--concurrency 1,8] [--workers 2] [--k 10]
                             [--vectors lightgcn,gaussian] [--repeats 3]

For each ``--vectors`` kind, builds a SQLite store over ``--items`` items with an active
version (dim 64; bench/query_latency.py's ``build``: a LightGCN trained on the synthetic
stream, about 3 minutes, or random Gaussian vectors), then for each ``--workers`` count
(comma-separated, e.g. ``1,2`` to compare) starts ``streamrec.api.serve(..., workers=N)``
in a subprocess (access log off) and for each concurrency level runs ``--repeats`` times
that many keep-alive connections sharing ``--requests`` requests for random known users.
Prints client-side p50/p99 latency (pooled over the runs, and p99 per run) and requests/s,
the served ANN index (its space and build-time recall), and the server-side query latency
quantiles read from the ``/metrics`` histogram (with several workers, of the one worker that
answers the scrape). Clients and server share the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import query_latency  # bench/ is on sys.path when this script runs

from stream.broker import free_port


def build(path: Path, users: int, items: int, events_per_user: int, seed: int,
          vectors: str) -> None:
    """The store of bench/query_latency.py (same data, same active version), closed."""
    query_latency.build(path, users, items, events_per_user, seed, vectors).engine.dispose()


def start_server(url: str, port: int, log: Path, workers: int = 1) -> subprocess.Popen[bytes]:
    """``serve(url, port=port, workers=workers)`` in a subprocess (uvicorn's log in ``log``),
    with the index cache ``streamrec serve`` defaults to (the workers share one built index),
    returned once every worker has started and a version is served."""
    code = ("import logging; logging.basicConfig(level=logging.INFO); "  # the index line
            "from streamrec.api import default_index_cache, serve; "
            f"serve({url!r}, port={port}, log_level='info', access_log=False, "
            f"workers={workers}, index_cache=default_index_cache({url!r}))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=out, stdout=out)
    started_at = time.monotonic()
    deadline = started_at + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        # a worker still loading does not accept yet (the others answer): count start-ups
        started = log.read_text().count("Application startup complete.")
        try:
            served = httpx.get(f"http://127.0.0.1:{port}/healthz").json().get("served")
            if served and started >= workers:
                print(f"{workers} worker(s) up in {time.monotonic() - started_at:.1f} s",
                      flush=True)
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the server did not come up within 300 s")


def _client(base: str, users: list[str], k: int) -> tuple[list[float], list[str]]:
    """One client process: a keep-alive connection, requests one after another."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    latencies, errors = [], []
    for user in users:
        t = time.perf_counter()
        conn.request("GET", f"/users/{user}/recommendations?k={k}")
        res = conn.getresponse()
        body = res.read()
        latencies.append((time.perf_counter() - t) * 1000)
        if res.status != 200 and len(errors) < 5:
            errors.append(f"{res.status}: {body[:200]!r}")
    conn.close()
    return latencies, errors


def run_load(base: str, users: list[str], k: int, concurrency: int) -> tuple[list[float], float]:
    """``concurrency`` client processes (stdlib http.client: client threads in one process
    would queue on their own GIL and add that wait to every latency) sharing ``users``."""
    chunks = [users[i::concurrency] for i in range(concurrency)]
    with multiprocessing.get_context("fork").Pool(concurrency) as pool:
        started = time.perf_counter()
        results = pool.starmap(_client, [(base, chunk, k) for chunk in chunks])
        elapsed = time.perf_counter() - started
    errors = [e for _, errs in results for e in errs]
    if errors:
        raise SystemExit(f"requests failed: {errors[:5]}")
    return [x for lat, _ in results for x in lat], elapsed


async def _async_clients(
    base: str, chunks: list[list[str]], k: int
) -> tuple[list[list[float]], list[str]]:
    host, port = base.removeprefix("http://").split(":")
    errors: list[str] = []

    async def client(users: list[str]) -> list[float]:
        reader, writer = await asyncio.open_connection(host, int(port))
        latencies = []
        for user in users:
            request = (f"GET /users/{user}/recommendations?k={k} HTTP/1.1\r\n"
                       f"Host: {host}\r\n\r\n").encode()
            t = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            body = await reader.readexactly(length)
            latencies.append((time.perf_counter() - t) * 1000)
            status = int(head.split(b" ", 2)[1])
            if status != 200 and len(errors) < 5:
                errors.append(f"{status}: {body[:200]!r}")
        writer.close()
        return latencies

    results = await asyncio.gather(*(client(chunk) for chunk in chunks))
    return list(results), errors


def run_load_async(
    base: str, users: list[str], k: int, concurrency: int
) -> tuple[list[float], float]:
    """``concurrency`` keep-alive connections driven by one asyncio process (like wrk: the
    load generator itself costs the shared cores little)."""
    chunks = [users[i::concurrency] for i in range(concurrency)]
    started = time.perf_counter()
    results, errors = asyncio.run(_async_clients(base, chunks, k))
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"requests failed: {errors[:5]}")
    return [x for lat in results for x in lat], elapsed


def server_quantiles(base: str, endpoint: str = "recommendations") -> dict[float, float]:
    """p50/p99 upper bounds (ms) from the server's query latency histogram buckets."""
    buckets: list[tuple[float, float]] = []
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith("streamrec_query_latency_seconds_bucket") and \
                f'endpoint="{endpoint}"' in line:
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0.0
    out = {}
    for q in (0.5, 0.99):
        out[q] = next((le * 1000 for le, n in buckets if total and n >= q * total), float("nan"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--events-per-user", type=int, default=20)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", default="1,8", help="comma-separated concurrent clients")
    ap.add_argument("--client", default="asyncio", choices=["asyncio", "processes"],
                    help="load generator: keep-alive connections from one asyncio process, "
                         "or one http.client process per client")
    ap.add_argument("--workers", default="2",
                    help="comma-separated server worker process counts, e.g. 1,2 to compare")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vectors", default="lightgcn,gaussian",
                    help="comma-separated active versions to serve: 'lightgcn' (trained on the "
                         "synthetic stream), 'trend' (the served ranker over it, as deployed) "
                         "and/or 'gaussian' (random vectors, "
                         "the ANN worst case)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs per concurrency level, each on new connections (the kernel "
                         "spreads connections over the workers at random: a run can be "
                         "lopsided); the summary pools them")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for vectors in args.vectors.split(","):
            path = Path(tmp) / f"api-{vectors}.db"
            t = time.perf_counter()
            build(path, args.users, args.items, args.events_per_user, args.seed, vectors)
            print(f"\n== {vectors} vectors: built store, {args.items:,} items, {args.users:,} "
                  f"users in {time.perf_counter() - t:.1f}s")
            for workers in (int(w) for w in args.workers.split(",")):
                measure(path, Path(tmp) / f"serve-{vectors}-{workers}.log", workers, args)


def measure(path: Path, log: Path, workers: int, args: argparse.Namespace) -> None:
    """Start a server on the store at ``path`` and print the load figures."""
    rng = np.random.default_rng(args.seed)  # the same requests for every server
    port = free_port()
    t = time.perf_counter()
    server = start_server(f"sqlite:///{path}", port, log, workers)
    index = next((line.split("index ", 1)[1] for line in log.read_text().splitlines()
                  if "index ItemIndex(" in line), "?")
    print(f"server with {workers} worker(s) up in {time.perf_counter() - t:.1f}s "
          f"(load + index build); {index}")
    base = f"http://127.0.0.1:{port}"
    try:
        warm = [f"u{u}" for u in rng.integers(1, args.users, 200)]
        load = run_load_async if args.client == "asyncio" else run_load
        load(base, warm, args.k, 2)
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            pooled, runs = [], []
            for _ in range(args.repeats):
                users = [f"u{u}" for u in rng.integers(1, args.users, args.requests)]
                lat, elapsed = load(base, users, args.k, concurrency)
                pooled += lat
                runs.append(f"p99 {np.percentile(lat, 99):.2f} ms at {len(lat) / elapsed:.0f} "
                            "req/s")
            p50, p99 = np.percentile(pooled, 50), np.percentile(pooled, 99)
            print(f"recommend k={args.k}, {args.items:,} items, {workers} worker(s), "
                  f"{concurrency} clients: p50 {p50:.2f} ms, p99 {p99:.2f} ms (target p99 < "
                  f"10 ms) over {len(pooled)} requests; per run: {'; '.join(runs)}")
        q = server_quantiles(base)
        scope = "all runs" if workers == 1 else "one worker's histogram"
        print(f"server-side query time ({scope}, histogram bucket bounds): "
              f"p50 <= {q[0.5]:.1f} ms, p99 <= {q[0.99]:.1f} ms")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
