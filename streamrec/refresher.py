"""Keeps a serving process's :class:`~streamrec.queries.QueryService` fresh: the active
version, its overlay rows and new users/items, checked from a background thread as soon as
another process commits to the store (:class:`~store.change_feed.ChangeFeed`), and every
``interval_s`` seconds regardless."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from store.change_feed import ChangeFeed
from store.embedding_schema import VersionInfo
from streamrec.metrics import Metrics
from streamrec.queries import QueryService

log = logging.getLogger(__name__)


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

    With ``change_feed`` the background thread checks as soon as another connection commits
    to the store (LISTEN/NOTIFY on PostgreSQL, a ``data_version`` poll on a SQLite file; see
    :mod:`store.change_feed`), at most every ``min_gap_s`` seconds, and every ``interval_s``
    seconds in any case; without one (or on an in-memory store), every ``interval_s``.
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
    change_feed: bool = False
    min_gap_s: float = 0.01
    reload_s: float = 0.0
    _reloaded_at: float = -math.inf
    _signature: tuple[Any, ...] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _feed: ChangeFeed | None = None

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
            # the ingest sequence moves with every stored event, late ones too (the trend
            # ranker's state follows the interactions table)
            signature = (active.id, active.activated_at, embeddings.overlay_newest(active.id),
                         self.overlay_size, graph.last_event_time(), graph.ingest_seq())
            same_version = self._signature is not None and self._signature[:2] == signature[:2]
            if not force and same_version and not self._rebuild_now():
                # a rebuild that is due but must wait for the duty cycle does not hold the
                # overlay back: it is applied in place meanwhile
                if signature == self._signature:
                    return False
                if self.service.refresh_overlay():
                    self._signature = signature
                    self.newest_overlay = self.service.served.watermark
                    return True
            started = time.perf_counter()
            self.service.refresh()
            self.reload_s = time.perf_counter() - started
            self._reloaded_at = time.monotonic()
            served = self.service.served
            self.served, self.newest_overlay = served.snapshot.version, served.watermark
            self._signature = signature
            if self.metrics is not None:
                self.metrics.api.refresh_seconds.observe(self.reload_s)
            log.info("serving %s (%d overlay rows) after a %.2fs reload, index %r",
                     self.served.name, self.overlay_size, self.reload_s, served.index)
            return True

    def _rebuild_due(self) -> bool:
        return self.service.index_fresh_share > self.max_fresh_share

    def _rebuild_now(self) -> bool:
        """A rebuild is due and the duty cycle lets it run now."""
        gap = self.reload_s * (1.0 / self.max_duty - 1.0)
        return self._rebuild_due() and time.monotonic() - self._reloaded_at >= gap

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
        feed_tried = -math.inf
        while not self._stop.is_set():
            if self.change_feed and self._feed is None and (
                    time.monotonic() - feed_tried > 30.0):
                feed_tried = time.monotonic()  # (re)open, at most every 30 s
                self._feed = ChangeFeed.open(self.service.embeddings.engine)
            started = time.monotonic()
            if self._feed is None:
                if self._stop.wait(self.interval_s):
                    return
            else:
                try:
                    self._feed.wait(self.interval_s, stop=self._stop)
                except Exception as exc:  # e.g. the database restarted: reopen later
                    log.warning("the change feed failed (%s: %s); polling every %.1fs until "
                                "it reopens", type(exc).__name__, exc, self.interval_s)
                    self._close_feed()
                    continue
                if self._stop.wait(max(0.0, self.min_gap_s - (time.monotonic() - started))):
                    return
            self.check_quietly()

    def _close_feed(self) -> None:
        feed, self._feed = self._feed, None
        if feed is not None:
            try:
                feed.close()
            except Exception as exc:  # a broken connection: nothing left to release
                log.debug("closing the change feed: %s", exc)

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout=30)
        self._close_feed()
