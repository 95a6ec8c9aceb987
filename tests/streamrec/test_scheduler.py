"""The retrain scheduler on real SQLite files: cron runs in a child process, failures are
recorded and leave the old version serving, the schedule survives a restart, one run at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.synthetic import generate
from streamrec.scheduler import RetrainScheduler, parse_cron


@pytest.fixture
def store_file(tmp_path) -> str:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'store.db'}"
    graph = GraphStore(url)
    graph.write_batch(list(generate(n_events=2000, seed=1).events()))
    graph.engine.dispose()
    return url


def _wait(condition: Callable[[], bool], timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.2)


def _active_name(url: str) -> str | None:
    store = EmbeddingStore(url)
    try:
        active = store.active_version()
        return None if active is None else active.name
    finally:
        store.engine.dispose()


def _no_overlap(runs: list[dict]) -> bool:
    spans = sorted((r["started_at"], r["finished_at"]) for r in runs)
    return all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:], strict=False))


def test_cron_fires_a_retrain_in_a_child_process(store_file: str) -> None:
    sched = RetrainScheduler(store_file, model="popularity", cron="* * * * * *")
    sched.start()
    try:
        _wait(lambda: any(r["status"] != "running" for r in sched.runs()))
    finally:
        sched.shutdown()
    runs = [r for r in sched.runs() if r["status"] != "running"]
    first = runs[-1]
    assert first["status"] == "ok" and first["exit_code"] == 0 and first["reason"] == "cron"
    assert first["version"] is not None and first["error"] is None and first["seconds"] > 0
    assert _active_name(store_file) == runs[0]["version"]
    assert _no_overlap(runs)


def test_a_failed_retrain_keeps_the_old_version_and_is_recorded(
    store_file: str, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    good = RetrainScheduler(store_file, model="popularity").run_now()
    assert good["status"] == "ok" and _active_name(store_file) == good["version"]
    bad = RetrainScheduler(store_file, model="no-such-model")
    with caplog.at_level("ERROR", logger="streamrec.scheduler"):
        outcome = bad.run_now(reason="test")
    assert outcome["status"] == "failed" and outcome["exit_code"] == 1
    assert "unknown model" in outcome["error"]
    assert any(r.levelname == "ERROR" and "failed" in r.message for r in caplog.records)
    assert _active_name(store_file) == good["version"]  # the old version keeps serving
    last = bad.runs(limit=1)[0]
    assert (last["status"], last["exit_code"], last["reason"]) == ("failed", 1, "test")
    assert "unknown model" in last["error"] and last["version"] is None


def test_an_empty_store_fails_cleanly(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    GraphStore(url).engine.dispose()
    outcome = RetrainScheduler(url, model="popularity").run_now()
    assert outcome["status"] == "failed" and outcome["exit_code"] == 1
    assert "no interactions" in outcome["error"]
    assert _active_name(url) is None


def test_a_restart_keeps_the_schedule(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    jobs = f"sqlite:///{tmp_path / 'jobs.db'}"
    first = RetrainScheduler(url, model="mf", cron="15 4 * * 1-5", jobstore_url=jobs)
    first.start()
    trigger, when = str(first.job.trigger), first.next_run_time
    first.shutdown()
    second = RetrainScheduler(url, model="mf", cron="15 4 * * 1-5", jobstore_url=jobs)
    assert second.job is not None  # read from the job store before starting
    assert (str(second.job.trigger), second.next_run_time) == (trigger, when)
    second.start()
    assert (str(second.job.trigger), second.next_run_time) == (trigger, when)
    assert "day_of_week='mon-fri'" in trigger and when.hour == 4 and when.minute == 15
    second.shutdown()
    changed = RetrainScheduler(url, model="mf", cron="0 5 * * *", jobstore_url=jobs)
    changed.start()
    assert changed.next_run_time.hour == 5 and "hour='5'" in str(changed.job.trigger)
    changed.shutdown()


def test_one_retrain_at_a_time(store_file: str) -> None:
    sched = RetrainScheduler(store_file, model="popularity", interval_s=1)
    sched.start()
    try:
        _wait(sched.retrain_running)
        assert sched.trigger_early("test drift") is False  # one is running
        assert sched.run_now()["status"] == "skipped"
        _wait(lambda: len([r for r in sched.runs() if r["status"] == "ok"]) >= 1)
    finally:
        sched.shutdown()
    runs = [r for r in sched.runs() if r["status"] != "skipped"]
    assert runs and all(r["status"] == "ok" for r in runs)
    assert _no_overlap(runs)
    skipped = [r for r in sched.runs() if r["status"] == "skipped"]
    assert skipped and "another retrain is running" in skipped[-1]["error"]
    assert "started by scheduler: cron" in skipped[-1]["error"]


def test_early_trigger_from_another_process_runs_a_retrain(store_file: str) -> None:
    sched = RetrainScheduler(store_file, model="popularity", cron="0 3 * * *", poll_s=0.5)
    sched.start()
    try:
        # e.g. the drift watcher in `ingest`: its scheduler is never started
        client = RetrainScheduler(store_file, model="popularity", cron="0 3 * * *")
        assert client.trigger_early("hit@20 dropped") is True
        client.shutdown()
        _wait(lambda: any(r["status"] == "ok" for r in sched.runs()))
    finally:
        sched.shutdown()
    assert sched.runs()[0]["reason"] == "early: hit@20 dropped"
    assert sched.job is not None  # the daily job is still there


def test_cron_expressions() -> None:
    assert "second='*/5'" in str(parse_cron("*/5 * * * * *"))
    assert "day_of_week='sun'" in str(parse_cron("0 3 * * 0"))
    with pytest.raises(ValueError, match="fields"):
        parse_cron("0 3 * *")
