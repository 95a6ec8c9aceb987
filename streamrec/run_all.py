"""`streamrec run`: consumer, incremental updater, retrain scheduler and HTTP API in one
process, for small deployments (one machine, one store). Larger ones run the services of
docker-compose.yml separately."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass

from store.embeddings import EmbeddingStore
from store.engine import WalCheckpointer
from store.graph import GraphStore
from stream.consumer import IngestLoop, IngestStats, join_timeout_s, make_consumer
from stream.retry import RetryPolicy
from streamrec.live import LiveUpdater
from streamrec.metrics import Metrics
from streamrec.scheduler import RetrainScheduler
from streamrec.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """What to run besides the consumer: the API on ``host:port`` and the cron scheduler."""

    host: str = "127.0.0.1"
    port: int = 8000
    cron: str = "0 3 * * *"
    model: str = "lightgcn"
    api: bool = True
    scheduler: bool = True


def run_all(settings: Settings, options: RunOptions) -> IngestStats:
    """Run until SIGINT/SIGTERM; the ingest loop owns the main thread and stops last-batch-safe."""
    import uvicorn

    from streamrec.api import create_app

    if not settings.bootstrap:
        raise ValueError("no Kafka broker: set --bootstrap or STREAMREC_BOOTSTRAP")
    graph = GraphStore(settings.store)
    embeddings = EmbeddingStore(graph.engine)
    metrics = Metrics()
    server: uvicorn.Server | None = None
    if options.api:
        app = create_app(graph, embeddings, retrain_token=settings.retrain_token,
                         metrics=metrics)
        server = uvicorn.Server(uvicorn.Config(app, host=options.host, port=options.port,
                                               log_level="warning", access_log=False))
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        threading.Thread(target=server.run, name="http-api", daemon=True).start()
        log.info("HTTP API on http://%s:%d", options.host, options.port)
    scheduler = None
    if options.scheduler:
        scheduler = RetrainScheduler(settings.store, model=options.model, cron=options.cron)
        scheduler.start()
        log.info("retrain scheduler: %s at %r", options.model, options.cron)
    retry = RetryPolicy()  # the event write and the update hook wait outages out alike
    live = LiveUpdater(graph, embeddings, retry=retry, settle_every=settings.settle_every)

    on_batch = metrics.ingest.counted(metrics.ingest.timed(live))

    consumer = make_consumer(settings.bootstrap, settings.topic, settings.group,
                             max_poll_interval_ms=settings.kafka_max_poll_interval_ms)
    loop = IngestLoop(consumer, graph, batch_size=settings.batch_size, on_batch=on_batch,
                      retry=retry,
                      join_grace_s=join_timeout_s(settings.kafka_max_poll_interval_ms),
                      on_lag=metrics.ingest.set_lags)

    def _stop(signum: int, _frame: object) -> None:
        log.info("%s: finishing the current batch, then stopping", signal.Signals(signum).name)
        loop.stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    live.should_stop = lambda: loop.stopping
    try:
        with WalCheckpointer(graph.engine), live:  # live: its watcher replays new bases
            return loop.run()
    finally:
        consumer.close(autocommit=False)
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        if server is not None:
            server.should_exit = True
        graph.engine.dispose()
