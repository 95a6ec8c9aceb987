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
    """Reloads ``service`` when the active version, its overlay or the events moved.

    :meth:`check` is cheap when nothing changed (four small reads); a reload builds the
    new snapshot and index aside and swaps it in, so requests never wait for it. A new
    active version is loaded at the next check; reloads for overlay rows or events alone
    are spaced so they take at most ``max_duty`` of the time (a reload at 100k items costs
    seconds, and continuous ingest would otherwise keep one core busy reloading).
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
    reload_s: float = 0.0
    _reloaded_at: float = -math.inf
    _signature: tuple[Any, ...] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def check(self, *, force: bool = False) -> bool:
        """Reload if anything moved (or ``force``); returns whether it reloaded."""
        with self._lock:
            self.last_check = time.monotonic()
            embeddings, graph = self.service.embeddings, self.service.graph
            active = embeddings.active_version()
            self.active = active
            if active is None:
                return False
            since = self.newest_overlay if self.served and self.served.id == active.id else None
            delta = embeddings.overlay_since(active.id, -math.inf if since is None else since)
            newest = float(delta.updated_at.max()) if len(delta.idx) else since
            self.overlay_size = embeddings.overlay_size(active.id)
            if self.metrics is not None:
                self.metrics.api.overlay_size.set(self.overlay_size)
            signature = (active.id, active.activated_at, newest, graph.last_event_time())
            if not force and signature == self._signature:
                return False
            same_version = self._signature is not None and self._signature[:2] == signature[:2]
            gap = self.reload_s * (1.0 / self.max_duty - 1.0)
            if not force and same_version and time.monotonic() - self._reloaded_at < gap:
                return False  # overlay rows / events only: wait, keep the duty cycle
            started = time.perf_counter()
            self.service.refresh()
            self.reload_s = time.perf_counter() - started
            self._reloaded_at = time.monotonic()
            snapshot = self.service.served.snapshot
            self.served, self.newest_overlay = snapshot.version, snapshot.watermark
            self._signature = (self.served.id, self.served.activated_at, self.newest_overlay,
                               signature[3])
            if self.metrics is not None:
                self.metrics.api.refresh_seconds.observe(self.reload_s)
            log.info("serving %s (%d overlay rows) after a %.2fs reload", self.served.name,
                     self.overlay_size, self.reload_s)
            return True

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
    """A retrain is already running."""


class RetrainRunner:
    """Runs one retrain at a time in a daemon thread; keeps every job's outcome."""

    def __init__(self, graph: GraphStore, embeddings: EmbeddingStore,
                 on_success: Callable[[], None]) -> None:
        self.graph, self.embeddings, self.on_success = graph, embeddings, on_success
        self.jobs: dict[str, RetrainJob] = {}
        self._lock = threading.Lock()
        self._running: str | None = None

    def submit(self, plan: retrain_job.RetrainPlan) -> RetrainJob:
        """Start ``plan`` in the background. Raises RetrainBusy, RetrainError (bad model)."""
        plan.model_kwargs()  # an unknown model fails here, before the 202
        with self._lock:
            if self._running is not None:
                raise RetrainBusy(f"retrain job {self._running} is still running")
            job = RetrainJob(job_id=uuid.uuid4().hex[:12], model=plan.model, status="running",
                             submitted_at=time.time())
            self.jobs[job.job_id] = job
            self._running = job.job_id
        threading.Thread(target=self._run, args=(job, plan), name=f"retrain-{job.job_id}",
                         daemon=True).start()
        return job

    def _run(self, job: RetrainJob, plan: retrain_job.RetrainPlan) -> None:
        try:
            info = retrain_job.retrain(self.graph, self.embeddings, plan)
            self.on_success()  # serve it before the job reports success
            job.version, job.status = info.name, "succeeded"
        except retrain_job.RetrainError as exc:
            job.error, job.status = str(exc), "failed"
        except Exception as exc:  # the old version keeps serving; record and log why
            log.exception("retrain job %s failed", job.job_id)
            job.error, job.status = f"{type(exc).__name__}: {exc}", "failed"
        finally:
            job.finished_at = time.time()
            with self._lock:
                self._running = None


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
        """A retrain job's status and, once it succeeded, the version it activated."""
        job = runner.jobs.get(job_id)
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


def serve(
    store_url: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    retrain_token: str | None = None,
    *,
    refresh_interval_s: float = 2.0,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Run the API with uvicorn until interrupted (what ``streamrec serve`` calls)."""
    import uvicorn

    graph = GraphStore(store_url)
    embeddings = EmbeddingStore(graph.engine)
    app = create_app(graph, embeddings, retrain_token=retrain_token,
                     refresh_interval_s=refresh_interval_s)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level.lower(),
                    access_log=access_log)
    finally:
        graph.engine.dispose()


__all__ = ["Refresher", "RetrainRunner", "create_app", "serve"]
