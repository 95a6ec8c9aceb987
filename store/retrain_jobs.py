"""The one retrain slot of a store and the record of every retrain, whoever starts it: the HTTP
API (``POST /retrain``), the scheduler (``streamrec schedule``) and ``streamrec retrain``.

``retrain_jobs`` holds one row per job (status ``queued``/``running``/``succeeded``/``failed``,
model, parameters, requested/started/finished times, the version it activated or the error,
and the host and pid of the process that runs it). :meth:`RetrainJobStore.claim` inserts a
``running`` row only while no other job is live, atomically across processes: on SQLite the
claim is one ``BEGIN IMMEDIATE`` write transaction, on PostgreSQL it holds a transaction-level
advisory lock. So every process (or host) on the store starts at most one retrain at a time.
The job's ``parameters`` carry its ``origin`` (``http``, ``cli``, ``scheduler: <reason>``), so
a refused claim says who holds the slot. A job claimed by one process and run by another (the
scheduler claims, its ``streamrec retrain`` child runs) is handed over with
:meth:`RetrainJobStore.adopt`.

A job that nobody finishes must not block retrains forever. The process running a job beats
its ``heartbeat_at`` (every 10 s in :class:`streamrec.retrain_runner.RetrainRunner`); a
``queued`` or ``running`` job is *abandoned* when its heartbeat is older than
``stale_after_s`` (default 120 s), or at once when it runs on this host and its pid is gone.
Reads report an abandoned job as ``failed`` (with the reason); the next claim writes that
outcome. Times are epoch seconds (float).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    Double,
    Engine,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    text,
    update,
)

from store.engine import DEFAULT_STORE_URL, make_engine
from store.schema import metadata

STATUSES = ("queued", "running", "succeeded", "failed")
LIVE = ("queued", "running")  # a live job holds the one-at-a-time slot
_LOCK_KEY = 0x5EED_0004  # PostgreSQL advisory lock: claiming the retrain-job slot
_ERROR_CHARS = 2000

retrain_jobs = Table(
    "retrain_jobs",
    metadata,
    Column("id", String(32), primary_key=True, comment="job id, as in /retrain/{job_id}"),
    Column("model", String(64), nullable=False),
    Column("parameters", Text, nullable=False, comment="JSON object: epochs, dim, cutoff"),
    Column("status", String(16), nullable=False),
    Column("requested_at", Double, nullable=False, comment="epoch seconds"),
    Column("started_at", Double, nullable=True, comment="epoch seconds"),
    Column("finished_at", Double, nullable=True, comment="epoch seconds"),
    Column("heartbeat_at", Double, nullable=False, comment="epoch seconds, last sign of life"),
    Column("version_id", Integer, nullable=True, comment="the version it activated"),
    Column("version", String(32), nullable=True, comment="its name, v{version_id}"),
    Column("error", Text, nullable=True),
    Column("host", String(255), nullable=False, comment="host name of the running process"),
    Column("pid", Integer, nullable=False, comment="pid of the running process"),
    CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed')",
                    name="ck_retrain_jobs_status"),
    Index("ix_retrain_jobs_status", "status"),
    Index("ix_retrain_jobs_requested_at", "requested_at"),
)


class RetrainJobBusy(RuntimeError):
    """Another retrain job is live; ``job`` is its record."""

    def __init__(self, job: RetrainJobRecord) -> None:
        super().__init__(f"retrain job {job.id} is still running (since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(job.requested_at))}"
                         f" UTC, started by {job.origin}, model {job.model}, pid {job.pid} on "
                         f"{job.host})")
        self.job = job


@dataclass(frozen=True)
class RetrainJobRecord:
    """One row of ``retrain_jobs`` (times in epoch seconds).

    >>> RetrainJobRecord("ab12", "mf", "running", requested_at=1.0).live
    True
    """

    id: str
    model: str
    status: str
    requested_at: float
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    version_id: int | None = None
    version: str | None = None
    error: str | None = None
    host: str = ""
    pid: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.status in LIVE

    @property
    def origin(self) -> str:
        """Who started it: ``http``, ``cli`` or ``scheduler: <reason>`` (``parameters``)."""
        return str(self.parameters.get("origin", "http"))


def this_host() -> str:
    """The host name recorded with a job (``socket.gethostname()``)."""
    return socket.gethostname()[:255]


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host (one owned by another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RetrainJobStore:
    """Retrain job records and the cross-process one-at-a-time slot (SQLite or PostgreSQL).

    Args:
        url_or_engine: the store's URL or engine (the table is created when missing).
        stale_after_s: seconds without a heartbeat after which a live job counts as
            abandoned (default 120; keep it well above the runner's heartbeat interval).
        keep: finished jobs kept; older ones are deleted when a job finishes (default 100).

    >>> jobs = RetrainJobStore("sqlite://")
    >>> job = jobs.claim("j1", "mf", {"epochs": 5})
    >>> jobs.claim("j2", "mf", {})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    store.retrain_jobs.RetrainJobBusy: retrain job j1 is still running ...
    >>> jobs.adopt("j1", pid=os.getpid()).status
    'running'
    >>> jobs.finish("j1", "succeeded", version_id=2, version="v2")
    >>> jobs.get("j1").status, jobs.get("j1").version, jobs.running() is None
    ('succeeded', 'v2', True)
    """

    def __init__(self, url_or_engine: str | Engine = DEFAULT_STORE_URL, *,
                 stale_after_s: float = 120.0, keep: int = 100) -> None:
        if stale_after_s <= 0:
            raise ValueError(f"stale_after_s must be positive, got {stale_after_s}")
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.engine = (
            make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        )
        self.stale_after_s, self.keep = stale_after_s, keep
        self._writer = self.engine.execution_options(write_lock=True)
        metadata.create_all(self.engine, tables=[retrain_jobs])

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"RetrainJobStore({url!r}, stale_after_s={self.stale_after_s})"

    # ------------------------------------------------------------------ writes
    def claim(self, job_id: str, model: str, parameters: dict[str, Any], *,
              host: str | None = None, pid: int | None = None,
              now: float | None = None) -> RetrainJobRecord:
        """Record job ``job_id`` as ``running`` unless another job is live (atomically).

        Abandoned live jobs (see the module docstring) are marked ``failed`` on the way.

        Args:
            job_id: a new unique id (at most 32 characters).
            model, parameters: what it trains (``parameters`` JSON-serialisable).
            host, pid: the process that runs it (default: this one).
            now: epoch seconds of the request (default: the clock).
        Raises:
            RetrainJobBusy: a live job holds the slot; nothing is written.
        """
        now = time.time() if now is None else now
        host = this_host() if host is None else host[:255]
        pid = os.getpid() if pid is None else pid
        t = retrain_jobs
        with self._writer.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
            rows = conn.execute(select(t).where(t.c.status.in_(LIVE))).all()
            for job in map(_record, rows):
                reason = self.abandoned(job, now)
                if reason is None:
                    raise RetrainJobBusy(job)
                conn.execute(update(t).where(t.c.id == job.id).values(
                    status="failed", finished_at=now, error=reason[:_ERROR_CHARS]))
            conn.execute(insert(t).values(
                id=job_id, model=model, parameters=json.dumps(parameters, sort_keys=True),
                status="running", requested_at=now, started_at=now, heartbeat_at=now,
                host=host, pid=pid))
        return RetrainJobRecord(job_id, model, "running", now, started_at=now, heartbeat_at=now,
                                host=host, pid=pid, parameters=dict(parameters))

    def adopt(self, job_id: str, *, host: str | None = None, pid: int | None = None,
              now: float | None = None) -> RetrainJobRecord:
        """Make the process ``(host, pid)`` (default: this one) the runner of the live job
        ``job_id`` that another process claimed for it; its record.

        Raises:
            KeyError: no such job, or it is no longer live (finished, or marked abandoned).
        """
        now = time.time() if now is None else now
        host = this_host() if host is None else host[:255]
        pid = os.getpid() if pid is None else pid
        t = retrain_jobs
        with self._writer.begin() as conn:
            res = conn.execute(update(t).where((t.c.id == job_id) & t.c.status.in_(LIVE))
                               .values(host=host, pid=pid, heartbeat_at=now))
        record = self.get(job_id, now=now)
        if res.rowcount == 0 or record is None or not record.live:
            state = "unknown" if record is None else record.status
            raise KeyError(f"retrain job {job_id!r} cannot be adopted: it is {state}, not "
                           "running (claim a new job instead)")
        return record

    def heartbeat(self, job_id: str, *, now: float | None = None) -> bool:
        """Mark a live job as still running; False if it is no longer live."""
        t = retrain_jobs
        with self._writer.begin() as conn:
            res = conn.execute(update(t).where((t.c.id == job_id) & t.c.status.in_(LIVE))
                               .values(heartbeat_at=time.time() if now is None else now))
        return res.rowcount > 0

    def finish(self, job_id: str, status: str, *, version_id: int | None = None,
               version: str | None = None, error: str | None = None,
               now: float | None = None) -> None:
        """Record a job's outcome (``succeeded`` or ``failed``) and prune old finished jobs.

        The outcome is written even if the job had been marked abandoned meanwhile: what the
        job itself reports is the truth.
        """
        if status not in ("succeeded", "failed"):
            raise ValueError(f"a job finishes as 'succeeded' or 'failed', not {status!r}")
        now = time.time() if now is None else now
        t = retrain_jobs
        with self._writer.begin() as conn:
            res = conn.execute(update(t).where(t.c.id == job_id).values(
                status=status, finished_at=now, heartbeat_at=now, version_id=version_id,
                version=version, error=None if error is None else error[:_ERROR_CHARS]))
            if res.rowcount == 0:
                raise KeyError(f"no retrain job {job_id!r} to finish")
            floor = (select(t.c.requested_at).order_by(t.c.requested_at.desc())
                     .offset(self.keep - 1).limit(1))
            oldest_kept = conn.execute(floor).scalar()
            if oldest_kept is not None:
                conn.execute(delete(t).where((t.c.requested_at < oldest_kept)
                                             & t.c.status.not_in(LIVE)))

    # ------------------------------------------------------------------- reads
    def get(self, job_id: str, *, now: float | None = None) -> RetrainJobRecord | None:
        """The job's record (an abandoned live job reads as ``failed``), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(retrain_jobs).where(retrain_jobs.c.id == job_id)).first()
        return None if row is None else self._as_seen(_record(row), now)

    def running(self, *, now: float | None = None) -> RetrainJobRecord | None:
        """The live job holding the slot, or None (abandoned ones do not count)."""
        t = retrain_jobs
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.status.in_(LIVE))).all()
        jobs = [self._as_seen(_record(r), now) for r in rows]
        return next((j for j in jobs if j.live), None)

    def recent(self, limit: int = 20, *, now: float | None = None) -> list[RetrainJobRecord]:
        """The newest ``limit`` jobs, newest first."""
        t = retrain_jobs
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).order_by(t.c.requested_at.desc()).limit(limit)).all()
        return [self._as_seen(_record(r), now) for r in rows]

    def abandoned(self, job: RetrainJobRecord, now: float | None = None) -> str | None:
        """Why a live ``job`` counts as abandoned, or None while it is alive (or finished)."""
        if not job.live:
            return None
        now = time.time() if now is None else now
        beat = job.heartbeat_at if job.heartbeat_at is not None else job.requested_at
        if job.host == this_host() and not pid_alive(job.pid):
            return (f"abandoned: process {job.pid} on {job.host} exited while the job was "
                    f"{job.status}")
        if now - beat > self.stale_after_s:
            return (f"abandoned: process {job.pid} on {job.host} sent no heartbeat for "
                    f"{now - beat:.0f} s (limit {self.stale_after_s:.0f} s)")
        return None

    def _as_seen(self, job: RetrainJobRecord, now: float | None) -> RetrainJobRecord:
        reason = self.abandoned(job, now)
        return job if reason is None else replace(job, status="failed", error=reason)


def _record(row: Any) -> RetrainJobRecord:
    m = row._mapping
    return RetrainJobRecord(
        id=m["id"], model=m["model"], status=m["status"], requested_at=float(m["requested_at"]),
        started_at=m["started_at"], finished_at=m["finished_at"], heartbeat_at=m["heartbeat_at"],
        version_id=m["version_id"], version=m["version"], error=m["error"], host=m["host"],
        pid=int(m["pid"]), parameters=json.loads(m["parameters"]),
    )
