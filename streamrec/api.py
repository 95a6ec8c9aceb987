"""The HTTP API: the query commands, version status, retrain trigger and metrics over FastAPI.

:func:`create_app` wires a :class:`~streamrec.queries.QueryService` (bodies as in
../shared/DESIGN.md), a background :class:`Refresher` that reloads it when a new version is
activated or overlay rows / events arrive, and a one-at-a-time :class:`RetrainRunner`.
:func:`serve` runs it with uvicorn (``streamrec serve``).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from store.embedding_schema import NoActiveVersionError, VersionInfo
from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from store.retrain_jobs import RetrainJobBusy, RetrainJobRecord, RetrainJobStore
from streamrec import retrain as retrain_job
from streamrec.metrics import Metrics
from streamrec.queries import QueryService, UnknownItem, UnknownUser

log = logging.getLogger(__name__)

NO_VERSION = "no embedding version is active yet: run `streamrec retrain` (or POST /retrain)"


# ------------------------------------------------------------------ bodies
class ScoredItem(BaseModel):
    item_id: str
    score: float


class Recommendations(BaseModel):
    user_id: str
    items: list[ScoredItem]
    fallback: bool = Field(description="true: unknown user, recent popularity instead")
    version: str


class SimilarItems(BaseModel):
    item_id: str
    items: list[ScoredItem] = Field(description="nearest items, never the item itself")


class Embedding(BaseModel):
    id: str
    kind: Literal["user", "item"]
    vector: list[float]
    version: str
    source: Literal["base", "overlay"] = Field(
        description="overlay: refreshed by the incremental updater since the base version")
    updated_at: float = Field(description="epoch seconds of the vector's newest event")
    source: Literal["base", "overlay"]
    updated_at: float = Field(description="epoch seconds")


class Version(BaseModel):
    id: int
    name: str
    model: str
    status: str
    cutoff: float
    dim: int
    num_users: int
    num_items: int
    created_at: float
    activated_at: float | None
    pruned: bool
    hyper_parameters: dict[str, Any]
    metrics: dict[str, Any]
    has_updater_state: bool


class Freshness(BaseModel):
    newest_overlay_at: float | None = Field(description="epoch s of the newest overlay row")
    overlay_age_s: float | None = Field(description="now - newest_overlay_at")
    active_version_age_s: float | None = Field(description="now - activation time")
    cutoff_age_s: float | None = Field(description="now - the active version's cutoff")


class Versions(BaseModel):
    active: str | None
    served: str | None = Field(description="the version the API answers from right now")
    overlay_size: int
    freshness: Freshness
    versions: list[Version]


class RetrainRequest(BaseModel):
    model: str = Field(description="lightgcn, pinsage, mf or popularity")
    epochs: int | None = Field(None, ge=1, le=10_000)
    dim: int | None = Field(None, ge=1, le=4096)
    cutoff: float | str | None = Field(None, description="epoch seconds or ISO-8601")


class RetrainJob(BaseModel):
    job_id: str
    model: str
    status: Literal["running", "succeeded", "failed"]
    submitted_at: float
    finished_at: float | None = None
    version: str | None = None
    error: str | None = None


class Health(BaseModel):
    status: Literal["ok", "no_active_version"]
    served: str | None


class Error(BaseModel):
    detail: str


# ---------------------------------------------------------------- refresher
@dataclass
class Refresher:
    """Keeps ``service`` on the active version, its overlay and the events.

    :meth:`check` is cheap when nothing changed (a few small reads). Overlay rows, new
    users/items and events of the served version are applied in place
    (:meth:`QueryService.refresh_overlay`: milliseconds, no index rebuild). A full reload
    builds the new snapshot and index aside and swaps it in, so requests never wait for it:
    at once for a new active version, and when the share of items the index scores from
    updated vectors passes ``max_fresh_share`` (each of them costs every query a dot
    product), spaced so reloads take at most ``max_duty`` of the time (one costs seconds at
    100k items).
    """

    service: QueryService
    interval_s: float = 2.0
    metrics: Metrics | None = None
    active: VersionInfo | None = None
    served: VersionInfo | None = None
    newest_overlay: float | None = None
    overlay_size: int = 0
    last_check: float = 0.0
    max_duty: float = 0.2
    max_fresh_share: float = 0.05
    reload_s: float = 0.0
    _reloaded_at: float = -math.inf
    _signature: tuple[Any, ...] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def check(self, *, force: bool = False) -> bool:
        """Refresh if anything moved (or ``force``); returns whether the served data changed."""
        with self._lock:
            self.last_check = time.monotonic()
            embeddings, graph = self.service.embeddings, self.service.graph
            active = embeddings.active_version()
            self.active = active
            if active is None:
                return False
            self.overlay_size = embeddings.overlay_size(active.id)
            if self.metrics is not None:
                self.metrics.api.overlay_size.set(self.overlay_size)
            signature = (active.id, active.activated_at, embeddings.overlay_newest(active.id),
                         self.overlay_size, graph.last_event_time())
            same_version = self._signature is not None and self._signature[:2] == signature[:2]
            if not force and signature == self._signature and not self._rebuild_due():
                return False
            if not force and same_version and not self._rebuild_due():
                if self.service.refresh_overlay():
                    self._signature = signature
                    self.newest_overlay = self.service.served.watermark
                    return True
            elif not force and same_version:
                gap = self.reload_s * (1.0 / self.max_duty - 1.0)
                if time.monotonic() - self._reloaded_at < gap:
                    return False  # the rebuild waits, keeping the duty cycle
            started = time.perf_counter()
            self.service.refresh()
            self.reload_s = time.perf_counter() - started
            self._reloaded_at = time.monotonic()
            served = self.service.served
            self.served, self.newest_overlay = served.snapshot.version, served.watermark
            self._signature = signature
            if self.metrics is not None:
                self.metrics.api.refresh_seconds.observe(self.reload_s)
            log.info("serving %s (%d overlay rows) after a %.2fs reload", self.served.name,
                     self.overlay_size, self.reload_s)
            return True

    def _rebuild_due(self) -> bool:
        return self.service.index_fresh_share > self.max_fresh_share

    def check_quietly(self) -> None:
        try:
            self.check()
        except Exception:  # keep serving the previous snapshot; say why
            log.exception("refreshing the served embeddings failed; the old snapshot stays")

    def maybe_check(self) -> None:
        """Lazy refresh on the request path, only when no background thread runs."""
        if self._thread is None and time.monotonic() - self.last_check > self.interval_s:
            self.check_quietly()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="streamrec-refresh", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check_quietly()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout=30)


# ----------------------------------------------------------------- retrains
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


# --------------------------------------------------------------------- app
def create_app(
    graph: GraphStore,
    embeddings: EmbeddingStore,
    *,
    retrain_token: str | None = None,
    refresh_interval_s: float = 2.0,
    metrics: Metrics | None = None,
    ann_backend: str = "faiss",
) -> FastAPI:
    """The HTTP API over ``graph`` and ``embeddings``.

    Args:
        retrain_token: bearer token that ``POST /retrain`` requires (None: retrain is off, 503).
        refresh_interval_s: how often the background thread looks for a new version, overlay
            rows or events (the thread runs while the app's lifespan does; without it a
            request refreshes lazily when the last check is older than this).
        metrics: the registry bundle to expose (default: a new one); pass the same one to the
            ingest loop when it runs in this process.
        ann_backend: of the query service, ``"faiss"`` or ``"numpy"``.
    """
    metrics = metrics if metrics is not None else Metrics()
    service = QueryService(graph, embeddings, ann_backend=ann_backend)
    refresher = Refresher(service, refresh_interval_s, metrics)
    runner = RetrainRunner(graph, embeddings, lambda: refresher.check_quietly())
    metrics.api.track_ages(
        lambda: refresher.served.activated_at if refresher.served else None,
        lambda: refresher.served.cutoff if refresher.served else None,
        lambda: refresher.newest_overlay,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        refresher.check_quietly()
        refresher.start()
        try:
            yield
        finally:
            refresher.stop()

    app = FastAPI(title="streamrec", version="0.1.0", lifespan=lifespan,
                  description="Recommendations, similar items and embeddings from the active "
                              "embedding version merged with its incremental overlay.")
    app.state.service, app.state.refresher, app.state.retrains = service, refresher, runner
    app.state.metrics = metrics
    errors: dict[int | str, dict[str, Any]] = {
        404: {"model": Error, "description": "unknown user or item"},
        503: {"model": Error, "description": "no version is active yet"},
    }

    def answer(endpoint: str, fn: Callable[[], dict]) -> Response:
        # Query endpoints are ``async def`` and return ready JSON bytes: measured at 100k
        # items with 8 concurrent clients, the threadpool hop of a sync endpoint (8 threads
        # contending for the GIL) and the response-model re-validation were most of the
        # server's time per request; the body is built by QueryService to the same schema.
        refresher.maybe_check()
        try:
            with metrics.api.time(endpoint):
                body = json.dumps(_finite(fn()), separators=(",", ":"))
        except NoActiveVersionError:
            metrics.api.error(endpoint, 503)
            raise HTTPException(503, NO_VERSION) from None
        except (UnknownUser, UnknownItem) as exc:
            metrics.api.error(endpoint, 404)
            raise HTTPException(404, str(exc.args[0] if exc.args else exc)) from None
        except ValueError as exc:
            metrics.api.error(endpoint, 422)
            raise HTTPException(422, str(exc)) from None
        return Response(body, media_type="application/json")

    k_query = Query(10, ge=1, le=1000, description="how many items (1-1000)")

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations,
             responses=errors, tags=["queries"])
    async def recommendations(user_id: str = Path(...), k: int = k_query,
                        exclude_seen: bool = Query(True)) -> Response:
        """Top-``k`` items for a user (never a seen one unless ``exclude_seen=false``)."""
        return answer("recommendations",
                      lambda: service.recommend(user_id, k, exclude_seen=exclude_seen))

    @app.get("/items/{item_id}/similar", response_model=SimilarItems, responses=errors,
             tags=["queries"])
    async def similar(item_id: str = Path(...), k: int = k_query) -> Response:
        """The ``k`` nearest items by inner product, never the item itself."""
        return answer("similar", lambda: service.similar(item_id, k))

    @app.get("/users/{user_id}/embedding", response_model=Embedding, responses=errors,
             tags=["queries"])
    async def user_embedding(user_id: str = Path(...)) -> Response:
        """The merged embedding of a user."""
        return answer("user_embedding", lambda: service.embedding("user", user_id))

    @app.get("/items/{item_id}/embedding", response_model=Embedding, responses=errors,
             tags=["queries"])
    async def item_embedding(item_id: str = Path(...)) -> Response:
        """The merged embedding of an item."""
        return answer("item_embedding", lambda: service.embedding("item", item_id))

    @app.get("/versions", response_model=Versions, tags=["versions"])
    def versions() -> Versions:
        """Every base version with its metadata, the active one, overlay size and freshness."""
        with metrics.api.time("versions"):
            return _versions(embeddings, refresher)

    bearer = HTTPBearer(auto_error=False, description="STREAMREC retrain token")

    @app.post("/retrain", response_model=RetrainJob, status_code=202, tags=["versions"],
              responses={401: {"model": Error}, 409: {"model": Error},
                         422: {"model": Error}, 503: {"model": Error}})
    def start_retrain(request: RetrainRequest = Body(...),
                      credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                      ) -> RetrainJob:
        """Start a full retrain in the background (one at a time); poll ``/retrain/{job_id}``."""
        if not retrain_token:
            raise HTTPException(503, "retrain over HTTP is disabled: no retrain token is "
                                     "configured (set STREAMREC_RETRAIN_TOKEN)")
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), retrain_token.encode()):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        plan = retrain_job.RetrainPlan(model=request.model, epochs=request.epochs,
                                       dim=request.dim, cutoff=_cutoff(request.cutoff),
                                       progress=False)
        try:
            return runner.submit(plan)
        except RetrainBusy as exc:
            raise HTTPException(409, str(exc)) from None
        except retrain_job.RetrainError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.get("/retrain/{job_id}", response_model=RetrainJob, tags=["versions"],
             responses={404: {"model": Error}})
    def retrain_status(job_id: str) -> RetrainJob:
        """A retrain job's status and, once it succeeded, the version it activated (any
        worker process answers for a job started through another)."""
        job = runner.get(job_id)
        if job is None:
            raise HTTPException(404, f"no retrain job {job_id!r}")
        return job

    @app.get("/healthz", response_model=Health, tags=["ops"])
    def healthz() -> Health:
        """Liveness: 200 while the process answers; says whether a version is served."""
        served = refresher.served.name if refresher.served else None
        return Health(status="ok" if served else "no_active_version", served=served)

    @app.get("/metrics", tags=["ops"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    def prometheus_metrics() -> Response:
        """Prometheus text exposition."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app


def _cutoff(value: float | str | None) -> float | None:
    from stream.events import InvalidEvent, parse_timestamp

    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except InvalidEvent as exc:
        raise HTTPException(422, exc.args[0].replace("field 'ts'", "cutoff")) from None


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: replace them by None (metrics of a failed run may hold them)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _versions(embeddings: EmbeddingStore, refresher: Refresher) -> Versions:
    now = time.time()
    infos = embeddings.versions()
    active = next((v for v in infos if v.status == "active"), None)
    newest, size = None, 0
    if active is not None:
        served = refresher.served
        since = refresher.newest_overlay if served and served.id == active.id else None
        delta = embeddings.overlay_since(active.id, -math.inf if since is None else since)
        newest = float(delta.updated_at.max()) if len(delta.idx) else since
        size = embeddings.overlay_size(active.id)

    def age(t: float | None) -> float | None:
        return None if t is None else max(0.0, now - t)

    return Versions(
        active=active.name if active else None,
        served=refresher.served.name if refresher.served else None,
        overlay_size=size,
        freshness=Freshness(
            newest_overlay_at=newest, overlay_age_s=age(newest),
            active_version_age_s=age(active.activated_at if active else None),
            cutoff_age_s=age(active.cutoff if active else None),
        ),
        versions=[
            Version(id=v.id, name=v.name, model=v.model, status=v.status, cutoff=v.cutoff,
                    dim=v.dim, num_users=v.num_users, num_items=v.num_items,
                    created_at=v.created_at, activated_at=v.activated_at, pruned=v.pruned,
                    hyper_parameters=_finite(v.hyper_parameters), metrics=_finite(v.metrics),
                    has_updater_state=v.has_updater_state)
            for v in infos
        ],
    )


WORKER_CONFIG_ENV = "STREAMREC_API_WORKER_CONFIG"  # serve() -> worker processes, JSON
# Seconds uvicorn's supervisor waits for a worker's answer to its health ping before it kills
# and replaces the worker (uvicorn >= 0.37; older ones wait 5 s). A spawned worker answers
# only once its interpreter has started and imported the app (torch, FAISS): on a loaded
# 2-core machine that took over 5 s, and the worker was killed and restarted while loading.
WORKER_HEALTHCHECK_S = 60


def serve(
    store_url: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    retrain_token: str | None = None,
    *,
    refresh_interval_s: float = 2.0,
    log_level: str = "info",
    access_log: bool = True,
    workers: int = 1,
) -> None:
    """Run the API with uvicorn until interrupted (what ``streamrec serve`` calls).

    Args:
        store_url: SQLAlchemy URL of the store.
        host, port: where to listen.
        retrain_token: bearer token of ``POST /retrain`` (None: retrain over HTTP is off).
        refresh_interval_s: seconds between each process's checks for a new version, overlay
            rows or events.
        log_level, access_log: of uvicorn.
        workers: server processes (default 1). With more, uvicorn's supervisor runs
            :func:`worker_app` in each (the configuration travels in the environment
            variable ``STREAMREC_API_WORKER_CONFIG``); every worker loads the active version
            and builds its own ANN index, so memory and start-up time grow with ``workers``,
            and ``/metrics`` describes the worker that answers it. Retrain jobs are shared
            through the store (one at a time across all workers).
    """
    import inspect

    import uvicorn

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers > 1 and store_url.startswith("sqlite") and (
            ":///" not in store_url or store_url.endswith(":memory:")):
        raise ValueError("an in-memory SQLite store cannot be shared by several worker "
                         "processes: use a SQLite file or PostgreSQL, or workers=1")
    # create every table here, once: N workers creating them at the same time would race
    graph = GraphStore(store_url)
    embeddings = EmbeddingStore(graph.engine)
    RetrainJobStore(graph.engine)
    if workers > 1:
        graph.engine.dispose()
        config = {"store_url": store_url, "retrain_token": retrain_token,
                  "refresh_interval_s": refresh_interval_s,
                  "logging_level": logging.getLogger().getEffectiveLevel()}
        supervisor: dict[str, Any] = {}
        if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:
            supervisor["timeout_worker_healthcheck"] = WORKER_HEALTHCHECK_S
        previous = os.environ.get(WORKER_CONFIG_ENV)
        os.environ[WORKER_CONFIG_ENV] = json.dumps(config)  # spawned workers inherit it
        try:
            uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, host=host,
                        port=port, log_level=log_level.lower(), access_log=access_log,
                        **supervisor)
        finally:
            if previous is None:
                os.environ.pop(WORKER_CONFIG_ENV, None)
            else:
                os.environ[WORKER_CONFIG_ENV] = previous
        return
    app = create_app(graph, embeddings, retrain_token=retrain_token,
                     refresh_interval_s=refresh_interval_s)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level.lower(),
                    access_log=access_log)
    finally:
        graph.engine.dispose()


def worker_app() -> FastAPI:
    """The app of one worker process of ``serve(..., workers=N)`` (uvicorn's app factory).

    Reads the configuration :func:`serve` put in ``STREAMREC_API_WORKER_CONFIG`` and builds
    its own stores, query service and refresher.
    """
    raw = os.environ.get(WORKER_CONFIG_ENV)
    if not raw:
        raise RuntimeError(f"{WORKER_CONFIG_ENV} is not set: worker_app is started by "
                           "streamrec.api.serve(..., workers=N) (`streamrec serve --workers N`)")
    config = json.loads(raw)
    if not logging.getLogger().handlers:  # a spawned process starts without the CLI's logging
        logging.basicConfig(level=config["logging_level"],
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    graph = GraphStore(config["store_url"])
    return create_app(graph, EmbeddingStore(graph.engine),
                      retrain_token=config["retrain_token"],
                      refresh_interval_s=config["refresh_interval_s"])


__all__ = ["Refresher", "RetrainRunner", "create_app", "serve"]
