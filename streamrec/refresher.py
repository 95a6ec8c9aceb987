"""Keeps a serving process's :class:`~streamrec.queries.QueryService` fresh: the active
version, its overlay rows and new users/items, checked from a background thread."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

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
            log.info("serving %s (%d overlay rows) after a %.2fs reload, index %r",
                     self.served.name, self.overlay_size, self.reload_s, served.index)
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
