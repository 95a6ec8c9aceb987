"""The HTTP API: the query commands, version status, retrain trigger and metrics over FastAPI.

:func:`create_app` wires a :class:`~streamrec.queries.QueryService` (bodies as in
../shared/DESIGN.md, models in :mod:`streamrec.api_bodies`), a background
:class:`~streamrec.refresher.Refresher` that keeps it on the active version and its overlay,
and a one-at-a-time :class:`~streamrec.retrain_runner.RetrainRunner`.
:func:`serve` runs it with uvicorn (``streamrec serve``).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import make_url

from store.ann import search_on_calling_threads
from store.ann_cache import IndexCache
from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from store.retrain_jobs import RetrainJobStore
from streamrec import retrain as retrain_job
from streamrec.api_bodies import (  # noqa: F401  (re-exported: the API's bodies)
    NO_VERSION,
    Embedding,
    Error,
    Freshness,
    Health,
    Recommendations,
    RetrainJob,
    RetrainRequest,
    ScoredItem,
    SimilarItems,
    Version,
    Versions,
)
from streamrec.api_queries import (
    EXCLUDE_SEEN_DEFAULT,
    K_DEFAULT,
    K_MAX,
    QueryAnswers,
    QueryFastPath,
    json_safe,
)
from streamrec.api_workers import WorkerSupervisor, reuse_port_supported
from streamrec.metrics import Metrics
from streamrec.queries import QueryService
from streamrec.refresher import Refresher
from streamrec.retrain_runner import RetrainBusy, RetrainRunner

log = logging.getLogger(__name__)



# --------------------------------------------------------------------- app
def create_app(
    graph: GraphStore,
    embeddings: EmbeddingStore,
    *,
    retrain_token: str | None = None,
    refresh_interval_s: float = 2.0,
    metrics: Metrics | None = None,
    ann_backend: str = "faiss",
    fast_path: bool = True,
    change_feed: bool = True,
    index_cache: IndexCache | None = None,
) -> FastAPI:
    """The HTTP API over ``graph`` and ``embeddings``.

    Args:
        retrain_token: bearer token that ``POST /retrain`` requires (None, empty or a
            placeholder such as ``change-me``: retrain over HTTP is off, 503 with a message
            that names ``STREAMREC_RETRAIN_TOKEN``).
        refresh_interval_s: how often the background thread looks for a new version, overlay
            rows or events at the latest (the thread runs while the app's lifespan does;
            without it a request refreshes lazily when the last check is older than this).
        change_feed: the background thread also looks as soon as another process commits
            to the store (:mod:`store.change_feed`: LISTEN/NOTIFY on PostgreSQL, a
            ``data_version`` poll every 20 ms on a SQLite file), so an ingested event shows
            in the answers within tens of milliseconds.
        metrics: the registry bundle to expose (default: a new one); pass the same one to the
            ingest loop when it runs in this process.
        ann_backend: of the query service, ``"faiss"`` or ``"numpy"``.
        fast_path: answer well-formed query requests in :class:`~streamrec.api_queries.
            QueryFastPath` ahead of FastAPI's routing (same bytes, less CPU per request);
            False: FastAPI routes every request.
        index_cache: share each version's built HNSW index with the other processes on this
            cache (see :class:`~streamrec.queries.QueryService`; default: None, build own).
    """
    metrics = metrics if metrics is not None else Metrics()
    search_on_calling_threads()
    retrain_token, token_problem = _usable_token(retrain_token)
    if token_problem:
        log.warning("POST /retrain is off: %s", token_problem)
    service = QueryService(graph, embeddings, ann_backend=ann_backend, index_cache=index_cache)
    refresher = Refresher(service, refresh_interval_s, metrics, change_feed=change_feed)
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

    answers = QueryAnswers(service, refresher, metrics)
    if fast_path:
        app.add_middleware(QueryFastPath, answers=answers)

    def respond(answer: tuple[int, bytes]) -> Response:
        # Query endpoints are ``async def`` and return ready JSON bytes: with sync endpoints
        # (8 threadpool threads contending for the GIL) and the response model re-validating
        # each body, p99 at 100k items and 8 concurrent clients was twice as long
        # (bench/api_load.py: 53 ms -> 24 ms on a loaded machine). QueryService builds the
        # bodies to the models' schema; tests/streamrec/test_api.py checks they match.
        status, body = answer
        return Response(body, status_code=status, media_type="application/json")

    k_query = Query(K_DEFAULT, ge=1, le=K_MAX, description=f"how many items (1-{K_MAX})")

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations,
             responses=errors, tags=["queries"])
    async def recommendations(user_id: str = Path(...), k: int = k_query,
                        exclude_seen: bool = Query(EXCLUDE_SEEN_DEFAULT)) -> Response:
        """Top-``k`` items for a user (never a seen one unless ``exclude_seen=false``)."""
        return respond(answers.recommendations(user_id, k, exclude_seen))

    @app.get("/items/{item_id}/similar", response_model=SimilarItems, responses=errors,
             tags=["queries"])
    async def similar(item_id: str = Path(...), k: int = k_query) -> Response:
        """The ``k`` nearest items by inner product, never the item itself."""
        return respond(answers.similar(item_id, k))

    @app.get("/users/{user_id}/embedding", response_model=Embedding, responses=errors,
             tags=["queries"])
    async def user_embedding(user_id: str = Path(...)) -> Response:
        """The merged embedding of a user."""
        return respond(answers.user_embedding(user_id))

    @app.get("/items/{item_id}/embedding", response_model=Embedding, responses=errors,
             tags=["queries"])
    async def item_embedding(item_id: str = Path(...)) -> Response:
        """The merged embedding of an item."""
        return respond(answers.item_embedding(item_id))

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
            raise HTTPException(503, f"retrain over HTTP is disabled: {token_problem}")
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


#: Tokens that a published example once carried: never accepted as the operator's own.
PLACEHOLDER_TOKENS = frozenset({"change-me", "changeme"})


def _usable_token(token: str | None) -> tuple[str | None, str]:
    """(the retrain token, "") or (None, why retrain over HTTP stays off)."""
    token = (token or "").strip()
    if not token:
        return None, ("no retrain token is configured: set STREAMREC_RETRAIN_TOKEN (a long "
                      "random string of your own) to enable it")
    if token.lower() in PLACEHOLDER_TOKENS:
        return None, (f"STREAMREC_RETRAIN_TOKEN is the placeholder {token!r}: set it to a "
                      "long random string of your own (e.g. `openssl rand -hex 32`)")
    return token, ""


def _cutoff(value: float | str | None) -> float | None:
    from stream.events import InvalidEvent, parse_timestamp

    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except InvalidEvent as exc:
        raise HTTPException(422, exc.args[0].replace("field 'ts'", "cutoff")) from None


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
                    hyper_parameters=json_safe(v.hyper_parameters), metrics=json_safe(v.metrics),
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


def publish_index(graph: GraphStore, embeddings: EmbeddingStore, cache: IndexCache,
                  **ann_options: Any) -> None:
    """Build the active version's ANN index into ``cache`` in this process, with FAISS's
    OpenMP threads, so that the workers started next read it back instead of the first of
    them building it on the one thread it searches with (:func:`create_app` keeps FAISS to
    one). The service is dropped afterwards; a catalogue below the ANN threshold caches
    nothing and costs only the load."""
    service = QueryService(graph, embeddings, ann_options=ann_options, index_cache=cache)
    started = time.perf_counter()
    service.refresh()
    if service.served is not None:
        log.info("built the ANN index of version %s for the workers in %.1f s",
                 service.served.snapshot.version.name, time.perf_counter() - started)


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
    index_cache: str | None = None,
) -> None:
    """Run the API with uvicorn until interrupted (what ``streamrec serve`` calls).

    Args:
        store_url: SQLAlchemy URL of the store.
        host, port: where to listen.
        retrain_token: bearer token of ``POST /retrain`` (None: retrain over HTTP is off).
        refresh_interval_s: seconds between each process's checks for a new version, overlay
            rows or events.
        log_level, access_log: of uvicorn.
        workers: server processes (default 1). With more, a
            :class:`~streamrec.api_workers.WorkerSupervisor` runs :func:`worker_app` in each,
            on its own ``SO_REUSEPORT`` socket so that the kernel spreads connections over
            them (the configuration travels in the environment variable
            ``STREAMREC_API_WORKER_CONFIG``); every worker loads the active version (so
            memory grows with ``workers``), and ``/metrics`` describes the worker that
            answers it. Retrain jobs are shared through the store (one at a time across all
            workers).
        index_cache: directory of the built HNSW indexes (:class:`~store.ann_cache.
            IndexCache`): with several workers this process builds the active version's
            index there before starting them (:func:`publish_index`), and a worker that
            needs a later version's builds and publishes it; the others, and later restarts,
            map it from there (one copy in memory for all); None or empty: every worker
            builds its own (default: None).
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
        if index_cache:
            publish_index(graph, embeddings, IndexCache(index_cache))
        graph.engine.dispose()
        config = {"store_url": store_url, "retrain_token": retrain_token,
                  "refresh_interval_s": refresh_interval_s, "index_cache": index_cache,
                  "logging_level": logging.getLogger().getEffectiveLevel()}
        previous = os.environ.get(WORKER_CONFIG_ENV)
        os.environ[WORKER_CONFIG_ENV] = json.dumps(config)  # spawned workers inherit it
        common = {"factory": True, "log_level": log_level.lower(), "access_log": access_log}
        try:
            if reuse_port_supported():
                supervisor = WorkerSupervisor(workers, host, port,
                                              {"app": f"{__name__}:worker_app", **common})
                status = supervisor.run()
                if status:
                    raise SystemExit(status)
            else:  # no SO_REUSEPORT (Windows): uvicorn's workers on one shared socket
                extra: dict[str, Any] = {}
                if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:
                    extra["timeout_worker_healthcheck"] = WORKER_HEALTHCHECK_S
                uvicorn.run(f"{__name__}:worker_app", workers=workers, host=host, port=port,
                            **common, **extra)
        finally:
            if previous is None:
                os.environ.pop(WORKER_CONFIG_ENV, None)
            else:
                os.environ[WORKER_CONFIG_ENV] = previous
        return
    app = create_app(graph, embeddings, retrain_token=retrain_token,
                     refresh_interval_s=refresh_interval_s,
                     index_cache=IndexCache(index_cache) if index_cache else None)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level.lower(),
                    access_log=access_log)
    finally:
        graph.engine.dispose()


def default_index_cache(store_url: str) -> str | None:
    """Where ``serve`` keeps built indexes by default: ``index-cache`` beside a SQLite file
    store, none for an in-memory one (one process), else ``./var/index-cache``."""
    url = make_url(store_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file::memory:"):
            return None
        return os.path.join(os.path.dirname(database) or ".", "index-cache")
    return os.path.join(".", "var", "index-cache")


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
    cache = config.get("index_cache")
    return create_app(graph, EmbeddingStore(graph.engine),
                      retrain_token=config["retrain_token"],
                      refresh_interval_s=config["refresh_interval_s"],
                      index_cache=IndexCache(cache) if cache else None)


__all__ = ["Refresher", "RetrainRunner", "create_app", "default_index_cache", "serve",
           "worker_app"]
