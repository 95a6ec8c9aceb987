"""The retrain scheduler: a cron (daily by default) that runs ``streamrec retrain`` in its own
process, one at a time, and keeps each outcome in the ``scheduler_runs`` table.

The schedule lives in an APScheduler SQLAlchemy job store (table ``scheduler_jobs`` of the
store's database), so a restart keeps it and a run missed while the scheduler was down still
fires within ``misfire_grace_s``. Each run first claims the store's one retrain slot
(:class:`~streamrec.retrain_runner.RetrainSlot`, table ``retrain_jobs``), the same slot that
``POST /retrain`` and ``streamrec retrain`` take; the child process adopts that job, so a
second retrain (cron, :meth:`RetrainScheduler.run_now`, an early trigger from the drift
watcher, an HTTP or CLI retrain, in this process or another one) is refused while it runs and
the run is recorded as ``skipped`` with the holder's description. The retrain itself
guarantees that a failure leaves the old version serving.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.job import Job
from apscheduler.jobstores.base import ConflictingIdError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)

from store.embeddings import EmbeddingStore
from store.engine import make_engine
from store.retrain_jobs import RetrainJobStore
from streamrec.retrain_runner import RetrainBusy, RetrainSlot

log = logging.getLogger(__name__)

JOB_ID = "streamrec-retrain"
EARLY_JOB_ID = "streamrec-retrain-early"
_ERROR_CHARS = 2000

metadata = MetaData()
scheduler_runs = Table(
    "scheduler_runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("reason", String(200), nullable=False),
    Column("model", String(50), nullable=False),
    Column("status", String(16), nullable=False),  # running | ok | failed | skipped
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("seconds", Float),
    Column("exit_code", Integer),
    Column("version", String(50)),
    Column("error", Text),
    Column("pid", Integer),
)

_children: dict[int, subprocess.Popen[str]] = {}
_children_lock = threading.Lock()
_inflight = 0  # run_retrain_job calls going on in this process
_inflight_cv = threading.Condition()


def parse_cron(expr: str, timezone: str = "UTC") -> CronTrigger:
    """A crontab expression -> trigger: 5 fields (minute hour day month weekday) or 6 fields
    (second first). Numeric weekdays follow crontab (0 or 7 = Sunday).

    >>> str(parse_cron("0 3 * * 1-5"))
    "cron[month='*', day='*', day_of_week='mon-fri', hour='3', minute='0', second='0']"
    >>> str(parse_cron("*/2 * * * * *"))
    "cron[month='*', day='*', day_of_week='*', hour='*', minute='*', second='*/2']"
    """
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"cron expression {expr!r} has {len(fields)} fields; give 5 "
                         "(minute hour day month weekday) or 6 (second first)")
    second = fields.pop(0) if len(fields) == 6 else "0"
    minute, hour, day, month, dow = fields
    return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                       day_of_week=_crontab_weekdays(dow), timezone=timezone)


_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _crontab_weekdays(field: str) -> str:
    """Crontab weekday numbers (0/7 = Sunday) -> APScheduler 3 names (its 0 is Monday)."""
    def name(token: str) -> str:
        return _DAYS[int(token) % 7] if token.isdigit() else token

    parts = []
    for part in field.split(","):
        rng, slash, step = part.partition("/")
        lo, dash, hi = rng.partition("-")
        if dash and lo.isdigit() and hi.isdigit() and int(lo) == 0 and not slash:
            parts.append("sun")  # APScheduler's week starts on Monday: split the range
            lo = "1"
        rng = f"{name(lo)}-{name(hi)}" if dash else name(lo)
        parts.append(rng + slash + step)
    return ",".join(p for p in parts if p != "mon-sun") or "*"


def _runs_engine(url: str) -> Engine:
    engine = make_engine(url)
    metadata.create_all(engine)
    return engine


def _record_start(engine: Engine, model: str, reason: str, status: str = "running",
                  error: str | None = None) -> int:
    """Insert this run's row in ``scheduler_runs`` (``running``, or ``skipped`` with the
    reason in ``error``); its id."""
    now = time.time()
    done = status != "running"
    with engine.execution_options(write_lock=True).begin() as conn:
        row = conn.execute(insert(scheduler_runs).values(
            reason=reason[:200], model=model, status=status, started_at=now, pid=os.getpid(),
            error=None if error is None else error[:_ERROR_CHARS],
            finished_at=now if done else None, seconds=0.0 if done else None))
        return int(row.inserted_primary_key[0])


def _finish(engine: Engine, run_id: int, outcome: dict[str, Any], keep_runs: int) -> None:
    t = scheduler_runs
    with engine.execution_options(write_lock=True).begin() as conn:
        conn.execute(update(t).where(t.c.id == run_id).values(
            status=outcome["status"], finished_at=outcome["finished_at"],
            seconds=outcome["seconds"], exit_code=outcome["exit_code"],
            version=outcome["version"], error=outcome["error"]))
        floor = select(t.c.id).order_by(t.c.id.desc()).offset(keep_runs - 1).limit(1)
        oldest_kept = conn.execute(floor).scalar()
        if oldest_kept is not None:
            conn.execute(delete(t).where((t.c.id < oldest_kept) & (t.c.status != "running")))


def retrain_command(store_url: str, model: str, *, epochs: int | None = None,
                    dim: int | None = None, job_id: str | None = None) -> list[str]:
    """The argv of the child process: ``python -m streamrec.cli retrain ...`` (with
    ``--job-id``: the child adopts that claimed retrain job)."""
    argv = [sys.executable, "-m", "streamrec.cli", "retrain", "--model", model,
            "--store", store_url]
    if job_id is not None:
        argv += ["--job-id", job_id]
    if epochs is not None:
        argv += ["--epochs", str(epochs)]
    if dim is not None:
        argv += ["--dim", str(dim)]
    return argv


def run_retrain_job(store_url: str, model: str, *, epochs: int | None = None,
                    dim: int | None = None, reason: str = "cron", timeout_s: float | None = None,
                    keep_runs: int = 100) -> dict[str, Any]:
    """Run one retrain in a child process and record its outcome; the scheduler's job.

    Module-level so the SQLAlchemy job store can pickle a reference to it. Returns the
    outcome: ``{"status": "ok"|"failed"|"skipped", "version", "seconds", "exit_code",
    "error", "reason", "model", "run_id", "job_id"}``; ``skipped`` (``error`` names the job
    that holds the slot) when another retrain of this store is running, whoever started it.
    """
    global _inflight
    with _inflight_cv:
        _inflight += 1
    try:
        return _run_retrain_job(store_url, model, epochs=epochs, dim=dim, reason=reason,
                                timeout_s=timeout_s, keep_runs=keep_runs)
    finally:
        with _inflight_cv:
            _inflight -= 1
            _inflight_cv.notify_all()


def _run_retrain_job(store_url: str, model: str, *, epochs: int | None, dim: int | None,
                     reason: str, timeout_s: float | None, keep_runs: int) -> dict[str, Any]:
    engine = _runs_engine(store_url)
    try:
        try:
            slot = RetrainSlot.claim(RetrainJobStore(engine), model,
                                     {"epochs": epochs, "dim": dim, "cutoff": None},
                                     origin=f"scheduler: {reason}"[:200])
        except RetrainBusy as exc:
            error = f"another retrain is running: {exc}"
            log.warning("retrain (%s) skipped: %s", reason, error)
            run_id = _record_start(engine, model, reason, status="skipped", error=error)
            return {"status": "skipped", "version": None, "seconds": 0.0, "exit_code": None,
                    "error": error, "reason": reason, "model": model, "run_id": run_id,
                    "job_id": None}
        with _finishing(slot):
            run_id = _record_start(engine, model, reason)
            log.info("retrain %d (%s, model %s, job %s) started", run_id, reason, model,
                     slot.job_id)
            versions = EmbeddingStore(engine)
            before = versions.active_version()
            outcome = _run_child(retrain_command(store_url, model, epochs=epochs, dim=dim,
                                                 job_id=slot.job_id), timeout_s)
            after = versions.active_version()
            if outcome["version"] is None and after is not None and (
                    before is None or after.id != before.id):
                # e.g. stopped between activation and its report: the new version does serve
                outcome["version"] = after.name
                outcome["error"] = f"{outcome['error']}\n({after.name} was activated nonetheless)"
            if outcome["version"] is not None:
                version_id = after.id if after is not None and after.name == outcome["version"] \
                    else None
                slot.outcome = {"status": "succeeded", "version": outcome["version"],
                                "version_id": version_id}
            else:
                slot.failed(outcome["error"] or "the retrain process failed")
            outcome.update(reason=reason, model=model, run_id=run_id, job_id=slot.job_id)
            _finish(engine, run_id, outcome, keep_runs)
    finally:
        engine.dispose()
    if outcome["status"] == "ok":
        log.info("retrain %d ok: %s active (model %s, %.1fs, %s)", run_id, outcome["version"],
                 model, outcome["seconds"], reason)
    else:
        log.error("retrain %d failed (exit code %s, %.1fs, %s); the previous version keeps "
                  "serving: %s", run_id, outcome["exit_code"], outcome["seconds"], reason,
                  outcome["error"])
    return outcome


@contextmanager
def _finishing(slot: RetrainSlot) -> Iterator[RetrainSlot]:
    """Hold ``slot`` (heartbeat) while the child runs; afterwards record the outcome unless
    the child, which adopted the job, did (it died, or never got that far)."""
    slot.start()
    try:
        yield slot
    except BaseException as exc:
        slot.failed(f"the scheduler failed while the retrain ran: {type(exc).__name__}: {exc}")
        raise
    finally:
        slot.finish_unless_recorded()


def _run_child(argv: list[str], timeout_s: float | None) -> dict[str, Any]:
    started = time.time()
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps error lines at 80 columns otherwise
    exit_code: int | None
    try:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env)
    except OSError as exc:
        stdout, stderr, exit_code = "", f"could not start the retrain process: {exc}", None
    else:
        with _children_lock:
            _children[child.pid] = child
        try:
            stdout, stderr = child.communicate(timeout=timeout_s)
            exit_code = child.returncode
        except subprocess.TimeoutExpired:
            child.kill()
            stdout, stderr = child.communicate()
            exit_code = child.returncode
            stderr += f"\nthe retrain ran past its timeout of {timeout_s}s and was killed"
        finally:
            with _children_lock:
                _children.pop(child.pid, None)
    match = re.search(r"^(\S+) active:", stdout, re.MULTILINE)
    version = match.group(1) if match else None
    ok = exit_code == 0 and version is not None
    error = None
    if not ok:
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower() or "Error" in ln]
        error = "\n".join((errors or lines)[-10:])[-_ERROR_CHARS:] or (
            f"exit code {exit_code} without output")
        if exit_code is not None and exit_code < 0:
            error = f"terminated by {signal.Signals(-exit_code).name}\n{error}"
    finished = time.time()
    return {"status": "ok" if ok else "failed", "version": version, "exit_code": exit_code,
            "error": error, "seconds": finished - started, "finished_at": finished}


def terminate_children() -> int:
    """SIGTERM every retrain child of this process (a shutdown); how many were signalled."""
    with _children_lock:
        children = list(_children.values())
    for child in children:
        child.terminate()
    return len(children)


def _wake() -> None:
    """No-op job: wakes the scheduler so it sees jobs other processes put in the job store."""


class RetrainScheduler:
    """The daily (cron) full retrain, persisted in the store's database.

    Args:
        store_url: SQLAlchemy URL of the store (the retrain's ``--store``).
        model: model of the retrain (default ``lightgcn``).
        cron: crontab expression, 5 fields or 6 with seconds first (default daily at 03:00).
        interval_s: run every this many seconds instead of ``cron`` (tests, demos).
        epochs / dim: passed to the retrain (default: the model's own).
        misfire_grace_s: a run missed by at most this much (scheduler down) still fires.
        jobstore_url: where the schedule is kept (default: ``store_url``, table
            ``scheduler_jobs``).
        timezone: time zone of the cron expression (default UTC).
        timeout_s: kill a retrain running longer than this (default: no limit).
        keep_runs: rows kept in ``scheduler_runs`` (default 100).
        poll_s: how often the scheduler looks for early runs requested by other processes.

    >>> s = RetrainScheduler("sqlite://", cron="30 2 * * *")
    >>> str(s.trigger)
    "cron[month='*', day='*', day_of_week='*', hour='2', minute='30', second='0']"
    """

    def __init__(self, store_url: str, *, model: str = "lightgcn", cron: str = "0 3 * * *",
                 interval_s: float | None = None, epochs: int | None = None,
                 dim: int | None = None, misfire_grace_s: int = 3600,
                 jobstore_url: str | None = None, timezone: str = "UTC",
                 timeout_s: float | None = None, keep_runs: int = 100,
                 poll_s: float = 10.0, jobs_table: str = "scheduler_jobs") -> None:
        self.store_url = store_url
        self.model = model
        self.cron = cron
        self.interval_s = interval_s
        self.epochs = epochs
        self.dim = dim
        self.misfire_grace_s = misfire_grace_s
        self.jobstore_url = jobstore_url or store_url
        self.timezone = timezone
        self.timeout_s = timeout_s
        self.keep_runs = keep_runs
        self.poll_s = poll_s
        self.jobs_table = jobs_table
        self.trigger = (IntervalTrigger(seconds=interval_s, timezone=timezone)
                        if interval_s is not None else parse_cron(cron, timezone))
        self._engine = _runs_engine(store_url)
        self._jobs = RetrainJobStore(self._engine)
        self._jobs_engine = (self._engine if self.jobstore_url == store_url
                             else make_engine(self.jobstore_url))
        self._scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self._jobs_engine,
                                                     tablename=jobs_table),
                       "memory": MemoryJobStore()},
            job_defaults={"coalesce": True, "max_instances": 1,
                          "misfire_grace_time": misfire_grace_s},
            timezone=timezone,
        )
        self._scheduler.add_listener(
            self._on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)

    def __repr__(self) -> str:
        return (f"RetrainScheduler(model={self.model!r}, trigger={self.trigger}, "
                f"store={_url(self._engine)!r})")

    def _job_kwargs(self, reason: str) -> dict[str, Any]:
        return {"store_url": self.store_url, "model": self.model, "epochs": self.epochs,
                "dim": self.dim, "reason": reason, "timeout_s": self.timeout_s,
                "keep_runs": self.keep_runs}

    def start(self) -> None:
        """Start the schedule in the background; a stored job with the same trigger and
        arguments is kept (so a run missed while down fires within the grace time), any
        other is replaced."""
        self._scheduler.start(paused=True)
        kwargs = self._job_kwargs("cron")
        job = self._scheduler.get_job(JOB_ID)
        if job is None or str(job.trigger) != str(self.trigger) or job.kwargs != kwargs:
            self._scheduler.add_job(run_retrain_job, self.trigger, id=JOB_ID,
                                    name="streamrec retrain", kwargs=kwargs,
                                    replace_existing=True, jobstore="default")
        self._scheduler.add_job(_wake, IntervalTrigger(seconds=self.poll_s), id="wake",
                                jobstore="memory", replace_existing=True)
        self._scheduler.resume()
        log.info("retrain scheduler started: %s %s, next run %s", self.model, self.trigger,
                 self.next_run_time)

    def shutdown(self, wait: bool = True) -> None:
        """Stop scheduling; with ``wait`` a running retrain is waited for."""
        if self._scheduler.running:
            # APScheduler 3 may still submit due jobs while shutdown() waits for the executor;
            # pause first and wait for running retrains here, so shutdown finds none
            self._scheduler.pause()
            if wait:
                with _inflight_cv:
                    _inflight_cv.wait_for(lambda: _inflight == 0)
            self._scheduler.shutdown(wait=wait)
        self._engine.dispose()
        if self._jobs_engine is not self._engine:
            self._jobs_engine.dispose()

    @property
    def running(self) -> bool:
        return self._scheduler.running

    @property
    def job(self) -> Job | None:
        """The stored cron job (readable before :meth:`start` too)."""
        if not self._scheduler.running:
            return self._peek_store().lookup_job(JOB_ID)
        return self._scheduler.get_job(JOB_ID)

    def _peek_store(self) -> SQLAlchemyJobStore:
        """The job store, opened without starting a scheduler (no thread, no processing)."""
        store = SQLAlchemyJobStore(engine=self._jobs_engine, tablename=self.jobs_table)
        store.start(self._scheduler, "default")
        return store

    @property
    def next_run_time(self) -> datetime | None:
        job = self.job
        return None if job is None else job.next_run_time

    def run_now(self, reason: str = "manual") -> dict[str, Any]:
        """Run a retrain now in this thread (child process) and return its outcome;
        ``skipped`` when one is running already."""
        return run_retrain_job(**self._job_kwargs(reason))

    def retrain_running(self) -> bool:
        """Whether some process holds this store's retrain slot now (a scheduled, HTTP or
        CLI retrain)."""
        return self._jobs.running() is not None

    def trigger_early(self, reason: str) -> bool:
        """Ask for a retrain now (the drift watcher's callback); False when one is running.

        In a process whose scheduler is not started (e.g. ``ingest``), the request is written
        to the shared job store and the ``streamrec schedule`` process runs it within its
        ``poll_s``.
        """
        if self.retrain_running():
            log.info("early retrain not requested (%s): a retrain is running", reason)
            return False
        kwargs = self._job_kwargs(f"early: {reason}")
        if self._scheduler.running:
            self._scheduler.add_job(run_retrain_job, "date", id=EARLY_JOB_ID,
                                    name="streamrec early retrain", kwargs=kwargs,
                                    replace_existing=True, jobstore="default")
        else:  # another process runs the schedule: put the request in the shared job store
            now = datetime.now(self._scheduler.timezone)
            job = Job(self._scheduler, id=EARLY_JOB_ID, func=run_retrain_job,
                      trigger=DateTrigger(now), executor="default", args=(), kwargs=kwargs,
                      name="streamrec early retrain", misfire_grace_time=self.misfire_grace_s,
                      coalesce=True, max_instances=1, next_run_time=now)
            store = self._peek_store()
            try:
                store.add_job(job)
            except ConflictingIdError:
                store.update_job(job)
        log.warning("early retrain requested: %s", reason)
        return True

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest recorded runs, newest first."""
        t = scheduler_runs
        with self._engine.connect() as conn:
            rows = conn.execute(select(t).order_by(t.c.id.desc()).limit(limit)).mappings()
            return [dict(r) for r in rows]

    def run_forever(self) -> int:
        """Start and block until SIGINT/SIGTERM (the CLI); terminates a running retrain's
        process on the way out (the previous version keeps serving). Returns 0."""
        stop = threading.Event()
        received: list[str] = []

        def _on_signal(signum: int, _frame: object) -> None:
            received.append(signal.Signals(signum).name)
            stop.set()

        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not stop.wait(1.0):
                pass
            log.info("%s: stopping the retrain scheduler", received[0])
            if terminate_children():
                log.warning("a running retrain was stopped; the previous version keeps serving")
        finally:
            self.shutdown(wait=True)
            for s, handler in previous.items():
                signal.signal(s, handler)
        return 0

    def _on_event(self, event: Any) -> None:
        if event.code == EVENT_JOB_ERROR:
            log.error("retrain job %s raised: %r", event.job_id, event.exception)
        elif event.code == EVENT_JOB_MISSED:
            log.warning("retrain job %s missed its run at %s (beyond the grace time)",
                        event.job_id, event.scheduled_run_time)
        else:
            log.warning("retrain job %s skipped: the previous run is still going", event.job_id)


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
