"""One retrain slot for every retrain, whoever starts it (the scheduler, ``POST /retrain``,
``streamrec retrain``): started together, exactly one runs and the others are refused with a
status that names the holder; on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from store.retrain_jobs import RetrainJobStore
from streamrec.api import create_app
from streamrec.scheduler import RetrainScheduler
from tests.streamrec.test_api import TOKEN, _community_events

AUTH = {"Authorization": f"Bearer {TOKEN}"}
POPULARITY = {"model": "popularity"}


@pytest.fixture
def client(store_url: str) -> Iterator[TestClient]:
    graph = GraphStore(store_url)
    graph.write_batch(_community_events())
    app = create_app(graph, EmbeddingStore(graph.engine), retrain_token=TOKEN,
                     ann_backend="numpy", refresh_interval_s=0.05)
    with TestClient(app) as c:
        yield c
    graph.engine.dispose()


def _versions(url: str) -> list[str]:
    store = EmbeddingStore(url)
    try:
        return [v.name for v in store.versions()]
    finally:
        store.engine.dispose()


def _wait(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout_s}s"
        time.sleep(0.05)


def _job(client: TestClient, job_id: str) -> dict:
    _wait(lambda: client.get(f"/retrain/{job_id}").json()["status"] != "running")
    return client.get(f"/retrain/{job_id}").json()


def test_a_scheduled_and_an_http_retrain_started_together_run_once(
    client: TestClient, store_url: str, gated_retrain
) -> None:  # type: ignore[no-untyped-def]
    release, _ = gated_retrain  # the HTTP retrain, if it wins, holds the slot until released
    scheduler = RetrainScheduler(store_url, model="popularity")
    barrier, outcome = threading.Barrier(2), {}

    def scheduled() -> None:
        barrier.wait()
        outcome.update(scheduler.run_now(reason="cron"))

    thread = threading.Thread(target=scheduled)
    thread.start()
    barrier.wait()
    res = client.post("/retrain", json=POPULARITY, headers=AUTH)
    thread.join(120)
    release.set()
    if res.status_code == 202:  # HTTP won: the scheduled run was refused, naming the holder
        assert outcome["status"] == "skipped", outcome
        assert "started by http" in outcome["error"] and res.json()["job_id"] in outcome["error"]
        assert _job(client, res.json()["job_id"])["status"] == "succeeded"
    else:  # the scheduler won: the HTTP request was refused, naming the holder
        assert res.status_code == 409, res.text
        assert "started by scheduler: cron" in res.json()["detail"]
        assert outcome["status"] == "ok", outcome
    assert len(_versions(store_url)) == 1  # exactly one retrain ran and activated
    assert scheduler.runs(limit=1)[0]["status"] == outcome["status"]
    scheduler.shutdown()


def test_http_is_refused_while_a_scheduled_retrain_runs(
    client: TestClient, store_url: str
) -> None:
    scheduler = RetrainScheduler(store_url, model="popularity")
    jobs = RetrainJobStore(store_url)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(scheduler.run_now()))
    thread.start()
    _wait(lambda: jobs.running() is not None or bool(outcome))
    busy = client.post("/retrain", json=POPULARITY, headers=AUTH)
    thread.join(120)
    assert busy.status_code == 409 and "started by scheduler: manual" in busy.json()["detail"]
    assert outcome["status"] == "ok" and _versions(store_url) == [outcome["version"]]
    job = jobs.get(outcome["job_id"])
    assert job is not None and job.status == "succeeded" and job.version == outcome["version"]
    assert job.pid != os.getpid()  # the `streamrec retrain` child adopted and ran the job
    again = client.post("/retrain", json=POPULARITY, headers=AUTH)
    assert again.status_code == 202
    # wait for it: a retrain still writing while the fixture drops the schema deadlocks
    assert _job(client, again.json()["job_id"])["status"] == "succeeded"
    scheduler.shutdown()
    jobs.engine.dispose()


def test_scheduled_and_cli_retrains_are_refused_while_an_http_one_runs(
    client: TestClient, store_url: str, gated_retrain
) -> None:  # type: ignore[no-untyped-def]
    release, started = gated_retrain
    res = client.post("/retrain", json=POPULARITY, headers=AUTH)
    assert res.status_code == 202 and started.wait(10)
    job_id = res.json()["job_id"]
    scheduler = RetrainScheduler(store_url, model="popularity")
    skipped = scheduler.run_now(reason="cron")
    assert skipped["status"] == "skipped" and job_id in skipped["error"]
    assert scheduler.runs(limit=1)[0]["status"] == "skipped"
    assert scheduler.retrain_running() and scheduler.trigger_early("drift") is False
    cli = subprocess.run([sys.executable, "-m", "streamrec.cli", "retrain", "--model",
                          "popularity", "--store", store_url], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert cli.returncode == 75, cli.stderr + cli.stdout
    assert "another retrain is running" in cli.stdout + cli.stderr
    assert job_id in cli.stdout + cli.stderr
    release.set()
    assert _job(client, job_id)["status"] == "succeeded"
    assert len(_versions(store_url)) == 1
    scheduler.shutdown()


def test_a_killed_scheduled_retrain_frees_the_slot(store_url: str) -> None:
    GraphStore(store_url).write_batch(_community_events())
    scheduler = RetrainScheduler(store_url, model="popularity", timeout_s=0.5)
    outcome = scheduler.run_now()
    assert outcome["status"] == "failed" and "timeout" in outcome["error"]
    jobs = RetrainJobStore(store_url)
    job = jobs.get(outcome["job_id"])
    assert job is not None and job.status == "failed" and jobs.running() is None
    scheduler.shutdown()
    jobs.engine.dispose()
