"""Retrains started over the HTTP API: one at a time across every API process on the store,
run on a background thread, recorded in ``retrain_jobs`` (:mod:`store.retrain_jobs`)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from store.retrain_jobs import RetrainJobBusy, RetrainJobRecord, RetrainJobStore
from streamrec import retrain as retrain_job
from streamrec.api_bodies import RetrainJob

log = logging.getLogger(__name__)


class RetrainBusy(RuntimeError):
    """A retrain is already running (in this process or another one on the same store)."""


class RetrainRunner:
    """Runs one retrain at a time across every API process on the store; keeps the outcomes.

    Each job is a row of ``retrain_jobs`` (:class:`~store.retrain_jobs.RetrainJobStore`), so
    any worker process answers ``GET /retrain/{job_id}``, and :meth:`submit` claims the single
    retrain slot atomically in the store, so two workers never train at once. The job runs in
    a daemon thread of the process that accepted it, which beats the row's heartbeat every
    ``heartbeat_s`` seconds; a job whose process died reads as ``failed`` once its heartbeat
    is older than the store's ``stale_after_s`` (at once when the pid is gone on this host),
    and then no longer blocks new jobs.

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
        try:
            record = self.jobs.claim(uuid.uuid4().hex[:12], plan.model, parameters)
        except RetrainJobBusy as exc:
            raise RetrainBusy(str(exc)) from None
        threading.Thread(target=self._run, args=(record.id, plan), name=f"retrain-{record.id}",
                         daemon=True).start()
        return _job_body(record)

    def get(self, job_id: str) -> RetrainJob | None:
        """A job's current body, whichever process runs it; None for an unknown id."""
        record = self.jobs.get(job_id)
        return None if record is None else _job_body(record)

    def _run(self, job_id: str, plan: retrain_job.RetrainPlan) -> None:
        done = threading.Event()
        beater = threading.Thread(target=self._beat, args=(job_id, done),
                                  name=f"retrain-{job_id}-heartbeat", daemon=True)
        beater.start()
        outcome: dict[str, Any] = {"status": "failed"}
        try:
            info = retrain_job.retrain(self.graph, self.embeddings, plan)
            self.on_success()  # serve it before the job reports success
            outcome = {"status": "succeeded", "version_id": info.id, "version": info.name}
        except retrain_job.RetrainError as exc:
            outcome["error"] = str(exc)
        except Exception as exc:  # the old version keeps serving; record and log why
            log.exception("retrain job %s failed", job_id)
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            done.set()
            beater.join(timeout=60)
            self._finish(job_id, outcome)

    def _beat(self, job_id: str, done: threading.Event) -> None:
        while not done.wait(self.heartbeat_s):
            try:
                self.jobs.heartbeat(job_id)
            except Exception as exc:  # the next beat retries; the job itself goes on
                log.warning("heartbeat of retrain job %s failed (%s); retrying in %.0fs",
                            job_id, exc, self.heartbeat_s)

    def _finish(self, job_id: str, outcome: dict[str, Any], attempts: int = 5) -> None:
        """Record the outcome, retrying a failing database (1, 2, 4, 8 s apart)."""
        for attempt in range(attempts):
            try:
                self.jobs.finish(job_id, **outcome)
                return
            except Exception:
                if attempt == attempts - 1:
                    log.exception("could not record the outcome %s of retrain job %s; it will "
                                  "read as failed (abandoned) once its heartbeat is stale",
                                  outcome["status"], job_id)
                    return
                time.sleep(2.0 ** attempt)


def _job_body(record: RetrainJobRecord) -> RetrainJob:
    # "queued" is never written by the API (a claim starts the job at once): report it as
    # running, the status of the contract's body that holds the slot
    status = "running" if record.live else record.status
    return RetrainJob(job_id=record.id, model=record.model, status=status,
                      submitted_at=record.requested_at, finished_at=record.finished_at,
                      version=record.version, error=record.error)
