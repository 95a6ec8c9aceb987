"""Retrain job records on SQLite and PostgreSQL: one live job at a time, outcomes, staleness."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from store.retrain_jobs import RetrainJobBusy, RetrainJobStore, this_host

T0 = 1_700_000_000.0


@pytest.fixture
def jobs(store_url: str) -> Iterator[RetrainJobStore]:
    s = RetrainJobStore(store_url, stale_after_s=60.0, keep=3)
    yield s
    s.engine.dispose()


def _dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_claim_get_finish(jobs: RetrainJobStore) -> None:
    job = jobs.claim("j1", "mf", {"epochs": 5, "dim": None}, now=T0)
    assert job.status == "running" and job.live and job.requested_at == job.started_at == T0
    got = jobs.get("j1", now=T0 + 1)
    assert got == job and got.parameters == {"epochs": 5, "dim": None}
    assert got.host == this_host() and got.pid > 0
    assert jobs.running(now=T0 + 1) == job
    jobs.finish("j1", "succeeded", version_id=7, version="v7", now=T0 + 30)
    done = jobs.get("j1", now=T0 + 31)
    assert done is not None and (done.status, done.version_id, done.version) == (
        "succeeded", 7, "v7")
    assert done.finished_at == T0 + 30 and done.error is None and not done.live
    assert jobs.running() is None and jobs.get("nope") is None
    with pytest.raises(KeyError, match="nope"):
        jobs.finish("nope", "failed")
    with pytest.raises(ValueError, match="succeeded"):
        jobs.finish("j1", "running")


def test_one_live_job_at_a_time(jobs: RetrainJobStore) -> None:
    jobs.claim("j1", "mf", {}, now=T0)
    with pytest.raises(RetrainJobBusy, match="j1 is still running") as busy:
        jobs.claim("j2", "lightgcn", {}, now=T0 + 1)
    assert busy.value.job.id == "j1"
    assert jobs.get("j2") is None  # nothing written by the refused claim
    jobs.finish("j1", "failed", error="x" * 5000, now=T0 + 2)
    failed = jobs.get("j1")
    assert failed is not None and failed.status == "failed" and len(failed.error or "") == 2000
    assert jobs.claim("j2", "lightgcn", {}, now=T0 + 3).id == "j2"


def test_concurrent_claims_admit_exactly_one(store_url: str) -> None:
    """Eight claimers, each on its own engine (as separate processes would be)."""
    stores = [RetrainJobStore(store_url) for _ in range(8)]
    barrier, won, lost = threading.Barrier(len(stores)), [], []

    def claim(n: int) -> None:
        barrier.wait()
        try:
            won.append(stores[n].claim(f"job{n}", "mf", {}).id)
        except RetrainJobBusy as exc:
            lost.append(exc.job.id)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(won) == 1 and lost == won * (len(stores) - 1)
    live = stores[0].running()
    assert live is not None and live.id == won[0]
    for s in stores:
        s.engine.dispose()


def test_job_without_heartbeat_is_abandoned(jobs: RetrainJobStore) -> None:
    jobs.claim("old", "mf", {}, host="elsewhere", pid=1, now=T0)
    assert jobs.heartbeat("old", now=T0 + 50)  # alive for another stale_after_s = 60 s
    with pytest.raises(RetrainJobBusy):
        jobs.claim("new", "mf", {}, now=T0 + 100)
    seen = jobs.get("old", now=T0 + 111)  # 61 s without a heartbeat: reads as failed
    assert seen is not None and seen.status == "failed" and "no heartbeat" in (seen.error or "")
    assert jobs.running(now=T0 + 111) is None
    assert jobs.claim("new", "mf", {}, now=T0 + 111).id == "new"
    stored = jobs.get("old", now=T0)  # the claim wrote the outcome
    assert stored is not None and stored.status == "failed" and stored.finished_at == T0 + 111
    assert not jobs.heartbeat("old")


def test_job_of_an_exited_process_is_abandoned_at_once(jobs: RetrainJobStore) -> None:
    pid = _dead_pid()
    jobs.claim("orphan", "mf", {}, pid=pid, now=T0)
    seen = jobs.get("orphan", now=T0 + 1)
    assert seen is not None and seen.status == "failed" and f"process {pid}" in (seen.error or "")
    assert jobs.claim("next", "mf", {}, now=T0 + 1).status == "running"


def test_finish_keeps_the_newest_jobs(jobs: RetrainJobStore) -> None:
    for n in range(5):
        jobs.claim(f"j{n}", "popularity", {}, now=T0 + n)
        jobs.finish(f"j{n}", "succeeded", now=T0 + n + 0.5)
    assert [j.id for j in jobs.recent()] == ["j4", "j3", "j2"]  # keep=3


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="stale_after_s"):
        RetrainJobStore("sqlite://", stale_after_s=0)
    with pytest.raises(ValueError, match="keep"):
        RetrainJobStore("sqlite://", keep=0)
