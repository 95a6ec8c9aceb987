"""Retrain jobs over HTTP shared by two apps on one store (as two worker processes would be),
on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from store.retrain_jobs import RetrainJobStore
from streamrec.api import create_app
from tests.streamrec.test_api import TOKEN, _community_events, _retrain

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def workers(store_url: str) -> Iterator[tuple[TestClient, TestClient]]:
    """Two apps over the same store, each with its own engine (like two worker processes)."""
    seed = GraphStore(store_url)
    seed.write_batch(_community_events())
    _retrain(seed, EmbeddingStore(seed.engine), "popularity")
    seed.engine.dispose()
    graphs = [GraphStore(store_url) for _ in range(2)]
    apps = [create_app(g, EmbeddingStore(g.engine), retrain_token=TOKEN, ann_backend="numpy",
                       refresh_interval_s=0.05) for g in graphs]
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
        yield a, b
    for g in graphs:
        g.engine.dispose()


def _wait(client: TestClient, job_id: str, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while (job := client.get(f"/retrain/{job_id}").json())["status"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def test_a_job_is_shared_by_every_worker(workers, gated_retrain) -> None:  # type: ignore[no-untyped-def]
    a, b = workers
    release, started = gated_retrain
    first = a.post("/retrain", json={"model": "popularity"}, headers=AUTH)
    assert first.status_code == 202 and started.wait(10)
    job_id = first.json()["job_id"]
    seen = b.get(f"/retrain/{job_id}").json()  # the other worker knows the job
    assert seen == first.json() and seen["status"] == "running"
    busy = b.post("/retrain", json={"model": "popularity"}, headers=AUTH)
    assert busy.status_code == 409 and job_id in busy.json()["detail"]
    assert a.post("/retrain", json={"model": "popularity"}, headers=AUTH).status_code == 409
    release.set()
    done = _wait(b, job_id)
    assert done["status"] == "succeeded" and done["version"] == "v2"
    assert done["finished_at"] >= done["submitted_at"]
    assert a.get(f"/retrain/{job_id}").json() == done
    deadline = time.monotonic() + 10  # the other worker serves the new version soon
    while b.get("/users/a1/recommendations").json()["version"] != "v2":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = b.post("/retrain", json={"model": "popularity"}, headers=AUTH)
    assert second.status_code == 202
    assert _wait(a, second.json()["job_id"])["version"] == "v3"


def test_a_failed_job_is_shared_and_frees_the_slot(workers) -> None:  # type: ignore[no-untyped-def]
    a, b = workers
    res = a.post("/retrain", json={"model": "mf", "cutoff": 0}, headers=AUTH)  # no events
    assert res.status_code == 202
    job = _wait(b, res.json()["job_id"])
    assert job["status"] == "failed" and job["error"] and job["version"] is None
    again = b.post("/retrain", json={"model": "popularity"}, headers=AUTH)
    assert again.status_code == 202
    assert _wait(a, again.json()["job_id"])["status"] == "succeeded"


def test_a_job_of_a_dead_worker_does_not_block(workers, store_url: str) -> None:  # type: ignore[no-untyped-def]
    a, b = workers
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a "worker" that claimed a job and died
    jobs = RetrainJobStore(store_url)
    jobs.claim("deadbeef0000", "mf", {}, pid=child.pid)
    jobs.engine.dispose()
    orphan = b.get("/retrain/deadbeef0000").json()
    assert orphan["status"] == "failed" and "exited" in orphan["error"]
    res = a.post("/retrain", json={"model": "popularity"}, headers=AUTH)
    assert res.status_code == 202
    assert _wait(b, res.json()["job_id"])["status"] == "succeeded"
