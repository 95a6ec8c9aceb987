"""Prometheus metrics of the HTTP API and the ingest loop, on one private registry.

:class:`Metrics` owns a :class:`~prometheus_client.CollectorRegistry` (never the global one,
so several apps or tests in one process do not collide) with :class:`ApiMetrics` and
:class:`IngestMetrics` registered on it; :meth:`Metrics.render` gives the text exposition
that ``GET /metrics`` serves. A standalone ingest process, which has no API, serves its
:class:`IngestMetrics` with :func:`serve_ingest_metrics` (prometheus_client's own server).

>>> m = Metrics()
>>> m.ingest.observe_batch(consumed=5, stored=3, duplicates=1, dead_letters=1)
>>> m.ingest.set_lag(12, partition=0)
>>> m.ingest.set_lags({0: 12, 1: 3})
>>> with m.api.time("recommendations"):
...     pass
>>> text = m.render()[0].decode()
>>> 'streamrec_ingest_events_total{outcome="stored"} 3.0' in text
True
>>> "streamrec_query_latency_seconds_bucket" in text
True
>>> 'streamrec_ingest_consumer_lag{partition="all"} 15.0' in text
True
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from store.graph import WriteResult

# seconds; dense below 10 ms, where the query latency target (p99 < 10 ms) lives
QUERY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)
UPDATE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ENDPOINTS = ("recommendations", "similar", "user_embedding", "item_embedding", "versions")
OUTCOMES = ("consumed", "stored", "duplicate", "dead_letter")


class ApiMetrics:
    """Query latency per endpoint, the served version's age, the overlay size.

    Args:
        registry: where the metrics are registered.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.query_latency = Histogram(
            "streamrec_query_latency_seconds",
            "Time to answer a query inside the API (excludes HTTP parsing), by endpoint",
            ["endpoint"], buckets=QUERY_BUCKETS, registry=registry,
        )
        self.errors = Counter(
            "streamrec_query_errors_total",
            "Queries answered with an error status, by endpoint and status code",
            ["endpoint", "status"], registry=registry,
        )
        self.active_version_age = Gauge(
            "streamrec_active_version_age_seconds",
            "Seconds since the served embedding version was activated (NaN: none active)",
            registry=registry,
        )
        self.base_cutoff_age = Gauge(
            "streamrec_active_version_cutoff_age_seconds",
            "Seconds since the served version's training cutoff (NaN: none active)",
            registry=registry,
        )
        self.overlay_size = Gauge(
            "streamrec_overlay_size",
            "Overlay rows belonging to the active version", registry=registry,
        )
        self.overlay_lag = Gauge(
            "streamrec_overlay_freshness_seconds",
            "Seconds since the newest overlay row of the served version (NaN: none)",
            registry=registry,
        )
        self.refresh_seconds = Histogram(
            "streamrec_refresh_seconds",
            "Time to reload the served snapshot and rebuild the index",
            buckets=UPDATE_BUCKETS, registry=registry,
        )
        self._children = {e: self.query_latency.labels(e) for e in ENDPOINTS}
        self.active_version_age.set(float("nan"))
        self.base_cutoff_age.set(float("nan"))
        self.overlay_lag.set(float("nan"))

    @contextmanager
    def time(self, endpoint: str) -> Iterator[None]:
        """Observe the duration of the ``with`` block under ``endpoint``."""
        child = self._children.get(endpoint) or self.query_latency.labels(endpoint)
        start = time.perf_counter()
        try:
            yield
        finally:
            child.observe(time.perf_counter() - start)

    def error(self, endpoint: str, status: int) -> None:
        self.errors.labels(endpoint, str(status)).inc()

    def track_ages(
        self,
        activated_at: Callable[[], float | None],
        cutoff: Callable[[], float | None],
        newest_overlay: Callable[[], float | None],
    ) -> None:
        """Compute the age gauges at scrape time from the given epoch-seconds getters."""

        def age(getter: Callable[[], float | None]) -> Callable[[], float]:
            def value() -> float:
                t = getter()
                return float("nan") if t is None else max(0.0, time.time() - t)

            return value

        self.active_version_age.set_function(age(activated_at))
        self.base_cutoff_age.set_function(age(cutoff))
        self.overlay_lag.set_function(age(newest_overlay))


class IngestMetrics:
    """What the ingest loop reports: consumer lag, event counts, update latency.

    The loop calls :meth:`observe_batch` (or :meth:`observe_write`) after each committed
    batch, :meth:`set_lags` (its ``on_lag``) after a poll and :meth:`observe_update` (or
    ``with time_update():``, or :meth:`timed`) around the incremental update. Events per
    second is ``rate(streamrec_ingest_events_total{outcome="consumed"}[1m])``.

    Args:
        registry: where the metrics are registered.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.consumer_lag = Gauge(
            "streamrec_ingest_consumer_lag",
            "Messages behind the end of the topic, by partition", ["partition"],
            registry=registry,
        )
        self.events = Counter(
            "streamrec_ingest_events_total",
            "Events seen by the ingest loop, by outcome "
            "(consumed, stored, duplicate, dead_letter)",
            ["outcome"], registry=registry,
        )
        self.batches = Counter(
            "streamrec_ingest_batches_total", "Batches committed to the store", registry=registry,
        )
        self.update_latency = Histogram(
            "streamrec_update_latency_seconds",
            "Time of one incremental embedding update (one batch)",
            buckets=UPDATE_BUCKETS, registry=registry,
        )
        self.last_event_time = Gauge(
            "streamrec_ingest_last_event_timestamp_seconds",
            "Event time (epoch s) of the newest stored event", registry=registry,
        )
        self._outcomes = {o: self.events.labels(o) for o in OUTCOMES}
        self._lag_partitions: set[str] = set()
        self._newest_event: float | None = None

    def observe_batch(
        self,
        *,
        consumed: int,
        stored: int,
        duplicates: int = 0,
        dead_letters: int = 0,
        last_event_time: float | None = None,
    ) -> None:
        """Count one committed batch of ``consumed`` messages."""
        for outcome, n in (("consumed", consumed), ("stored", stored),
                           ("duplicate", duplicates), ("dead_letter", dead_letters)):
            if n < 0:
                raise ValueError(f"{outcome} count must be >= 0, got {n}")
            if n:
                self._outcomes[outcome].inc(n)
        self.batches.inc()
        if last_event_time is not None:
            self.last_event_time.set(last_event_time)

    def set_lag(self, lag: int, partition: int | str = "all") -> None:
        """Messages behind the log end of ``partition`` (or of the whole topic: ``"all"``)."""
        self.consumer_lag.labels(str(partition)).set(lag)

    def set_lags(self, lags: Mapping[int, int]) -> None:
        """Messages behind the log end by partition, and their sum as ``"all"``.

        Fits :class:`stream.consumer.IngestLoop`'s ``on_lag``. A partition missing from
        ``lags`` (moved to another group member) is dropped, so its last value does not
        linger as if this process still owned it.
        """
        current = {str(p) for p in lags}
        for gone in self._lag_partitions - current:
            self.consumer_lag.remove(gone)
        for partition, lag in lags.items():
            self.set_lag(lag, partition)
        self.set_lag(sum(lags.values()))
        self._lag_partitions = current

    def observe_write(self, result: WriteResult) -> None:
        """Count one committed batch from the store's :class:`~store.graph.WriteResult`.

        Every message of a batch ends up stored, duplicate or dead letter, so their sum is
        the batch's consumed count; the event-time gauge keeps the newest event time seen
        (epoch s), since batches may carry older events than earlier ones.
        """
        if len(result.ts):
            newest = float(result.ts.max())
            if self._newest_event is None or newest > self._newest_event:
                self._newest_event = newest
        self.observe_batch(
            consumed=result.stored + result.duplicates + result.dead_letters,
            stored=result.stored, duplicates=result.duplicates,
            dead_letters=result.dead_letters, last_event_time=self._newest_event,
        )

    def timed(self, update: Callable[[WriteResult], object]) -> Callable[[WriteResult], None]:
        """``update`` (the incremental updater) with each call observed as one update."""

        def run(result: WriteResult) -> None:
            with self.time_update():
                update(result)

        return run

    def counted(
        self, hook: Callable[[WriteResult], object] | None = None
    ) -> Callable[[WriteResult], None]:
        """An ``on_batch`` hook that runs ``hook`` (the updater, maybe :meth:`timed`), then
        counts the batch with :meth:`observe_write`: a batch counts once it is updated."""

        def run(result: WriteResult) -> None:
            if hook is not None:
                hook(result)
            self.observe_write(result)

        return run

    def observe_update(self, seconds: float) -> None:
        self.update_latency.observe(seconds)

    @contextmanager
    def time_update(self) -> Iterator[None]:
        """Observe the duration of the ``with`` block as one incremental update."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.update_latency.observe(time.perf_counter() - start)


class Metrics:
    """One registry with the API and ingest metrics on it; :meth:`render` for ``/metrics``.

    Args:
        registry: an existing registry (default: a new, private one).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.api = ApiMetrics(self.registry)
        self.ingest = IngestMetrics(self.registry)

    def render(self) -> tuple[bytes, str]:
        """(Prometheus text exposition, its content type)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def serve_ingest_metrics(
    port: int, addr: str = "0.0.0.0"
) -> tuple[IngestMetrics, WSGIServer]:
    """Ingest metrics on a private registry, served at ``http://addr:port/metrics`` from a
    daemon thread; for an ingest process without the HTTP API. Raises :class:`OSError` when
    the port is taken. ``server.shutdown()`` stops it.

    ``addr`` defaults to every interface, as a Prometheus scrape target usually must.
    """
    registry = CollectorRegistry()
    ingest = IngestMetrics(registry)
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return ingest, server


__all__ = ["ApiMetrics", "IngestMetrics", "Metrics", "serve_ingest_metrics"]
