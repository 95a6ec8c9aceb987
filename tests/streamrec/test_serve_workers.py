"""`streamrec serve --workers 2`: both worker processes take connections, answer queries and
share retrain jobs."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.broker import free_port
from stream.synthetic import generate
from streamrec.retrain import RetrainPlan, retrain

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(),
                                reason="finds the answering worker through Linux /proc")

TOKEN = "w0rkers"


def _workers(pid: int) -> set[int]:
    """uvicorn's worker processes: the spawned children of ``pid`` (not the resource tracker)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = {int(p) for p in f.read().split()}
    out = set()
    for child in children:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.add(child)
        except OSError:
            continue
    return out


def _owner(conn: http.client.HTTPConnection, port: int, pids: set[int]) -> int | None:
    """The pid among ``pids`` holding the server end of the open connection ``conn``."""
    client_port = conn.sock.getsockname()[1]
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote = (int(a.split(":")[1], 16) for a in fields[1:3])
            if (local, remote) == (port, client_port):
                inode = fields[9]
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def _request(port: int, method: str, path: str, pids: set[int], body: dict | None = None,
             ) -> tuple[int, dict, int | None]:
    """(status, JSON body, answering worker pid) over a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers=headers)
        res = conn.getresponse()
        payload = json.loads(res.read())
        return res.status, payload, _owner(conn, port, pids)  # still open: keep-alive
    finally:
        conn.close()


def _assert_connections_spread(port: int, workers: set[int], n: int = 32) -> None:
    """A burst of ``n`` keep-alive connections, opened at once as a client pool does, lands
    on every worker (the kernel spreads them over the workers' SO_REUSEPORT sockets: all on
    one of two by chance with probability 2 ** (1 - n))."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        owners = []
        for sock in socks:
            sock.setblocking(True)
            sock.settimeout(10)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.sock = sock  # _owner reads the client port off it
            owners.append(_owner(conn, port, workers))
        assert set(owners) == workers, owners
    finally:
        for sock in socks:
            sock.close()


def test_two_workers_answer_and_share_retrain_jobs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    events = list(generate(n_events=1000, seed=7, days=10).events())
    graph = GraphStore(url)
    graph.write_batch(events)
    retrain(graph, EmbeddingStore(graph.engine), RetrainPlan(model="popularity", progress=False))
    graph.engine.dispose()
    port = free_port()
    env = {**os.environ, "STREAMREC_RETRAIN_TOKEN": TOKEN, "STREAMREC_LOG_LEVEL": "WARNING"}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamrec.cli", "serve", "--workers", "2", "--port", str(port),
         "--store", url], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        workers: set[int] = set()
        answered: set[int] = set()
        while answered != workers or len(workers) < 2:  # both workers up and serving
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, f"workers {workers}, answered {answered}"
            workers = _workers(proc.pid)
            try:
                status, body, pid = _request(port, "GET", "/healthz", workers)
            except OSError:
                time.sleep(0.2)
                continue
            if status == 200 and body["served"] == "v1" and pid is not None:
                answered.add(pid)
        assert len(workers) == 2, workers
        _assert_connections_spread(port, workers)

        user, item = events[0].user_id, events[0].item_id
        status, body, _ = _request(port, "GET", f"/users/{user}/recommendations?k=5", workers)
        assert status == 200 and len(body["items"]) == 5 and body["version"] == "v1"
        status, body, _ = _request(port, "GET", f"/items/{item}/similar?k=5", workers)
        assert status == 200 and item not in [r["item_id"] for r in body["items"]]

        status, job, _ = _request(port, "POST", "/retrain", workers,
                                  {"model": "mf", "epochs": 1, "dim": 8})
        assert status == 202 and job["status"] == "running", job
        status, busy, _ = _request(port, "POST", "/retrain", workers, {"model": "popularity"})
        assert status == 409 and job["job_id"] in busy["detail"], busy

        polled: set[int] = set()
        while True:  # poll until done, and until both workers answered about the job
            status, seen, pid = _request(port, "GET", f"/retrain/{job['job_id']}", workers)
            assert status == 200 and seen["job_id"] == job["job_id"], seen
            if pid is not None:
                polled.add(pid)
            if seen["status"] != "running" and polled == workers:
                break
            assert time.monotonic() < deadline + 60, (seen, polled)
            time.sleep(0.05)
        assert seen["status"] == "succeeded" and seen["version"] == "v2", seen

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "serve.log").read_text()
        assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test started
            proc.wait()
        log.close()
