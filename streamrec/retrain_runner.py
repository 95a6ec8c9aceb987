"""The one retrain slot, as every retrain takes it: :class:`RetrainSlot` (claim or adopt a
``retrain_jobs`` row, beat its heartbeat while training, record the outcome), used by
``streamrec retrain``, the scheduler and :class:`RetrainRunner`, which runs the HTTP API's
retrains on a background thread (:mod:`store.retrain_jobs` holds the records)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

from store.embeddings import EmbeddingStore, VersionInfo
from store.graph import GraphStore
from store.retrain_jobs import RetrainJobBusy, RetrainJobRecord, RetrainJobStore
from streamrec import retrain as retrain_job
from streamrec.api_bodies import RetrainJob

log = logging.getLogger(__name__)


class RetrainBusy(RuntimeError):
    """A retrain is already running (in this process or another one on the same store)."""


class RetrainSlot:
    """A held retrain slot: a live ``retrain_jobs`` row whose heartbeat this process beats
    every ``heartbeat_s`` seconds from :meth:`start` until the outcome is recorded.

    Use it as a context manager around the training: call :meth:`succeeded` with the
    activated version inside; leaving by an exception (or without a version) records the job
    as ``failed``. Build one with :meth:`claim` (a new job) or :meth:`adopt` (a job another
    process claimed for this one, e.g. the scheduler for its ``streamrec retrain`` child).

    >>> jobs = RetrainJobStore("sqlite://")
    >>> with RetrainSlot.claim(jobs, "mf", {}, origin="cli") as slot:
    ...     RetrainSlot.claim(jobs, "mf", {}, origin="http")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamrec.retrain_runner.RetrainBusy: retrain job ... started by cli, model mf, ...
    >>> jobs.get(slot.job_id).status
    'failed'
    """

    def __init__(self, jobs: RetrainJobStore, record: RetrainJobRecord, *,
                 heartbeat_s: float = 10.0) -> None:
        if not 0 < heartbeat_s < jobs.stale_after_s / 2:
            raise ValueError(f"heartbeat_s must be in (0, stale_after_s / 2 = "
                             f"{jobs.stale_after_s / 2}), got {heartbeat_s}")
        self.jobs, self.record, self.heartbeat_s = jobs, record, heartbeat_s
        self.outcome: dict[str, Any] = {"status": "failed",
                                        "error": "the retrain ended without a version"}
        self._done = threading.Event()
        self._beater: threading.Thread | None = None

    @property
    def job_id(self) -> str:
        return self.record.id

    def __repr__(self) -> str:
        return f"RetrainSlot(job_id={self.job_id!r}, origin={self.record.origin!r})"

    @classmethod
    def claim(cls, jobs: RetrainJobStore, model: str, parameters: dict[str, Any], *,
              origin: str, heartbeat_s: float = 10.0) -> RetrainSlot:
        """Claim the store's slot for a new job started by ``origin``; RetrainBusy if held."""
        try:
            record = jobs.claim(uuid.uuid4().hex[:12], model, {**parameters, "origin": origin})
        except RetrainJobBusy as exc:
            raise RetrainBusy(str(exc)) from None
        return cls(jobs, record, heartbeat_s=heartbeat_s)

    @classmethod
    def adopt(cls, jobs: RetrainJobStore, job_id: str, *, heartbeat_s: float = 10.0
              ) -> RetrainSlot:
        """Take over the live job ``job_id`` (KeyError when it is not live any more)."""
        return cls(jobs, jobs.adopt(job_id), heartbeat_s=heartbeat_s)

    def start(self) -> RetrainSlot:
        """Start beating the heartbeat (idempotent)."""
        if self._beater is None:
            self._beater = threading.Thread(target=self._beat, daemon=True,
                                            name=f"retrain-{self.job_id}-heartbeat")
            self._beater.start()
        return self

    def succeeded(self, info: VersionInfo) -> None:
        """The job activated ``info``: it is recorded as succeeded on leaving."""
        self.outcome = {"status": "succeeded", "version_id": info.id, "version": info.name}

    def failed(self, error: str) -> None:
        self.outcome = {"status": "failed", "error": error}

    def __enter__(self) -> RetrainSlot:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            self.failed(str(exc) if isinstance(exc, retrain_job.RetrainError)
                        else f"{type(exc).__name__}: {exc}")
        self.finish()

    def finish_unless_recorded(self) -> None:
        """:meth:`finish`, unless the job already has an outcome (the process that adopted
        it recorded one)."""
        self._stop_beating()
        record = self.jobs.get(self.job_id)
        if record is None or record.finished_at is None:
            self.finish()

    def _stop_beating(self) -> None:
        self._done.set()
        if self._beater is not None:
            self._beater.join(timeout=60)

    def finish(self) -> None:
        """Stop the heartbeat and record :attr:`outcome`, retrying a failing database
        (1, 2, 4, 8 s apart); the job reads as abandoned later if that never succeeds."""
        self._stop_beating()
        attempts = 5
        for attempt in range(attempts):
            try:
                self.jobs.finish(self.job_id, **self.outcome)
                return
            except Exception:
                if attempt == attempts - 1:
                    log.exception("could not record the outcome %s of retrain job %s; it will "
                                  "read as failed (abandoned) once its heartbeat is stale",
                                  self.outcome["status"], self.job_id)
                    return
                time.sleep(2.0 ** attempt)

    def _beat(self) -> None:
        while not self._done.wait(self.heartbeat_s):
            try:
                self.jobs.heartbeat(self.job_id)
            except Exception as exc:  # the next beat retries; the job itself goes on
                log.warning("heartbeat of retrain job %s failed (%s); retrying in %.0fs",
                            self.job_id, exc, self.heartbeat_s)


class RetrainRunner:
    """Runs the HTTP API's retrains, each in a :class:`RetrainSlot` on a daemon thread.

    :meth:`submit` claims the store's single slot synchronously (so a 202 means this job
    runs and a 409 names the job that holds the slot, whoever started it), and any worker
    process answers ``GET /retrain/{job_id}`` from the ``retrain_jobs`` row. A job whose
    process died reads as ``failed`` once its heartbeat is older than the store's
    ``stale_after_s`` (at once when the pid is gone on this host) and no longer blocks.

    Args:
        graph, embeddings: the stores the retrain reads and publishes to.
        on_success: called after a job's version is activated and before the job reports
            success (the API reloads its served snapshot; other workers pick the new version
            up at their next refresh check).
        jobs: the job records (default: a :class:`RetrainJobStore` on ``graph.engine``).
        heartbeat_s: seconds between heartbeats of a running job (default 10).
    """

    def __init__(self, graph: GraphStore, embeddings: EmbeddingStore,
                 on_success: Callable[[], None], *, jobs: RetrainJobStore | None = None,
                 heartbeat_s: float = 10.0) -> None:
        self.graph, self.embeddings, self.on_success = graph, embeddings, on_success
        self.jobs = jobs if jobs is not None else RetrainJobStore(graph.engine)
        if not 0 < heartbeat_s < self.jobs.stale_after_s / 2:
            raise ValueError(f"heartbeat_s must be in (0, stale_after_s / 2 = "
                             f"{self.jobs.stale_after_s / 2}), got {heartbeat_s}")
        self.heartbeat_s = heartbeat_s

    def submit(self, plan: retrain_job.RetrainPlan) -> RetrainJob:
        """Start ``plan`` in the background. Raises RetrainBusy, RetrainError (bad model)."""
        plan.model_kwargs()  # an unknown model fails here, before the 202
        parameters = {"epochs": plan.epochs, "dim": plan.dim, "cutoff": plan.cutoff}
        slot = RetrainSlot.claim(self.jobs, plan.model, parameters, origin="http",
                                 heartbeat_s=self.heartbeat_s)
        threading.Thread(target=self._run, args=(slot, plan), name=f"retrain-{slot.job_id}",
                         daemon=True).start()
        return _job_body(slot.record)

    def get(self, job_id: str) -> RetrainJob | None:
        """A job's current body, whichever process runs it; None for an unknown id."""
        record = self.jobs.get(job_id)
        return None if record is None else _job_body(record)

    def _run(self, slot: RetrainSlot, plan: retrain_job.RetrainPlan) -> None:
        try:
            with slot:
                info = retrain_job.retrain(self.graph, self.embeddings, plan)
                self.on_success()  # serve it before the job reports success
                slot.succeeded(info)
        except retrain_job.RetrainError:
            pass  # recorded by the slot; the old version keeps serving
        except Exception:  # recorded by the slot; the old version keeps serving
            log.exception("retrain job %s failed", slot.job_id)


def _job_body(record: RetrainJobRecord) -> RetrainJob:
    # "queued" is never written (a claim starts the job at once): report it as running, the
    # status of the contract's body that holds the slot
    status = "running" if record.live else record.status
    return RetrainJob(job_id=record.id, model=record.model, status=status,
                      submitted_at=record.requested_at, finished_at=record.finished_at,
                      version=record.version, error=record.error)
