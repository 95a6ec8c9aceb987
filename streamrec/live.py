"""The consumer's update hook: the overlay of the active base, derived from the stored events.

:class:`LiveUpdater` is called by the ingest loop after each stored batch (after the database
commit, before the offset commit) and by its own watcher thread every ``poll_s`` seconds
while no batch comes. Each call is ONE :meth:`~store.embeddings.EmbeddingStore.live_transaction`,
serialised against every live updater of every process: it reads the events stored since
its last call, by any ingest process, in ingest order (store/event_log.py), folds them into
the incremental updater in canonical order (:class:`~models.event_fold.OrderedFold`) and
writes the nodes whose vectors changed as overlay rows. The overlay is therefore a
deterministic function of (base, events after it), however many processes ingest and
however Kafka batches their partitions; a restarted process rebuilds the same state.

Merge rule (../shared/DESIGN.md): on a new active base (seen on a batch or on the watcher's
poll, so a quiet stream gets its replay at once) it rebuilds from that base alone: the
neighbour buffers hold what the base trained on (ingest sequence ``<= S`` and ``ts <= C``;
the retrain publishes them with the version, so a start costs the buffers and the unseen
events, not the history) and every event it did not see (``seq > S``, late ones with
``ts <= C`` included, or ``ts > C``) is folded in. No event is lost, none is counted twice.

Outages: each call is retried with the ingest's back-off (:class:`~stream.retry.RetryPolicy`)
instead of killing the process; the nodes still to write are kept until a transaction that
wrote them commits, so a commit lost to the outage is written by the retry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from models.event_fold import OrderedFold
from models.incremental_updater import IncrementalUpdater
from models.neighbour_buffer import NeighbourBuffer
from models.updater import TemporalUpdater
from store import event_log
from store.embedding_schema import VersionInfo
from store.embeddings import EmbeddingStore
from store.graph import GraphStore, WriteResult
from stream.retry import RetryPolicy, Stopped, is_outage

log = logging.getLogger(__name__)
_NONE = np.empty(0, np.int64)


@dataclass
class LiveStats:
    """Counters of the live updater (for the summary line and metrics)."""

    batches: int = 0
    events: int = 0
    replays: int = 0
    replayed_events: int = 0
    rewinds: int = 0
    rebuilds: int = 0
    rows_written: int = 0
    seconds: float = 0.0


class LiveUpdater:
    """Keeps overlay rows of the active base fresh: one :meth:`sync` per ingested batch.

    Args:
        graph: the graph store (the truth the updater's state is derived from).
        embeddings: the embedding store (base versions, updater weights, overlay).
        num_neighbours: recent neighbours per node ``N`` (default 20).
        chunk: events per canonical update step (default 500: the micro-batch the
            updater's figures were measured with, bench/updater_cost.py; a model setting,
            since a node updated once over many events moves differently from one updated
            in several steps).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        retry: back-off for database outages (default: wait forever, as ingest does).
        poll_s: seconds between the watcher's checks for a new base or events stored by
            other processes (default 1.0; see :meth:`watching`).
        settle_every: events a batch's sync folds in fast, in arrival order, before one
            settles them canonically (default 5,000; see below).

    ``should_stop`` (default: never) ends a retry wait with :class:`~stream.retry.Stopped`;
    point it at the ingest loop's stop flag.

    A batch's sync folds its events in fast (:class:`~models.event_fold.OrderedFold` with
    ``settle=False``: arrival order, no re-work, as cheap as the plain updater); a settling
    sync folds everything since the last one in canonically: once ``settle_every`` events
    are pending, on the watcher's first poll after ``poll_s`` without a sync (a quiet
    stream), at a new base and when the watcher stops. So the overlay is the canonical
    function of (base, events) whenever the stream pauses for a second, and at most
    ``settle_every`` events of arrival order away from it while events pour in. Measured
    (1,000-event batches over 4 skewed partitions, 60k-event LightGCN base, one thread): a
    fast batch costs what the plain updater's did (50 vs 53 ms), a settling pass about as
    much again per event (1.2 s for 20,000 events); settling at every batch cost 1.6-3x
    and fell behind bench/freshness.py's 5,000 events/s.
    """

    def __init__(
        self,
        graph: GraphStore,
        embeddings: EmbeddingStore,
        *,
        num_neighbours: int = 20,
        chunk: int = 500,
        device: str = "auto",
        retry: RetryPolicy | None = None,
        poll_s: float = 1.0,
        settle_every: int = 5000,
    ) -> None:
        self.graph = graph
        self.embeddings = embeddings
        self.num_neighbours = num_neighbours
        self.chunk = chunk
        self.device = device
        self.retry = retry or RetryPolicy()
        self.poll_s = poll_s
        self.settle_every = settle_every
        self.should_stop: Callable[[], bool] = lambda: False
        self.stats = LiveStats()
        self._version_id: int | None = None
        self._fold: OrderedFold | None = None
        self._seq = 0  # the ingest sequence folded up to
        self._pending = {"user": _NONE, "item": _NONE}  # nodes whose rows are not written yet
        self._lock = threading.Lock()  # one sync at a time: writer thread vs. watcher
        self._stop_watch = threading.Event()
        self._watcher: threading.Thread | None = None
        self._last_sync = -float("inf")  # time.monotonic() of the last sync

    @property
    def version_id(self) -> int | None:
        return self._version_id

    @property
    def seq(self) -> int:
        """The ingest sequence the served state is derived up to."""
        return self._seq

    @property
    def unsettled(self) -> int:
        """Events folded in fast, in arrival order, that no settling sync has folded yet."""
        return 0 if self._fold is None else self._fold.unsettled

    def __call__(self, result: WriteResult) -> None:
        """The ingest loop's hook: ``result`` is stored, so :meth:`sync` folds it in (with
        whatever other processes stored meanwhile)."""
        self.sync()

    def sync(self, *, settle: bool = False, should_stop: Callable[[], bool] | None = None
             ) -> int:
        """Fold in every event stored since the last call (canonically with ``settle``, see
        the class doc) and write the changed nodes' rows in one transaction, retried
        through outages; returns the rows written.

        Raises:
            Stopped: ``should_stop()`` (default: :attr:`should_stop`) turned true while
                waiting for the database; what is not written yet is kept for the next call.
        """
        started = time.perf_counter()
        with self._lock:
            written = self.retry.call(lambda: self._sync_once(settle),
                                      should_stop=should_stop or self.should_stop)
            if written is None:
                return 0  # nothing to update before the first retrain
            self.stats.batches += 1
            self.stats.seconds += time.perf_counter() - started
            self._last_sync = time.monotonic()
        return written

    def _sync_once(self, settle: bool) -> int | None:
        while True:
            active = self.embeddings.active_version()
            if active is None:
                return None
            if active.id != self._version_id:
                self._load(active)  # outside the transaction: it folds in every unseen event
            with self.embeddings.live_transaction() as conn:
                current = self.embeddings.active_version(conn)
                if current is not None and current.id == self._version_id:
                    new = event_log.events_after(conn, self._seq)
                    self._fold_in(new, settle)
                    # per-batch state derived from the same events goes here, on `conn`
                    written = self._write_pending(conn)
                    break
            # a base was activated between the two reads: rebuild on it first
        self._pending = {"user": _NONE, "item": _NONE}  # committed
        self.stats.rows_written += written
        return written

    def _fold_in(self, new: event_log.StoredEvents, settle: bool) -> None:
        fold = self._fold
        if fold is not None and (new.num_events or (settle and fold.unsettled)):
            settle = settle or fold.unsettled + new.num_events >= self.settle_every
            rewinds, rebuilds = fold.rewinds, fold.rebuilds
            users, items = fold.add(new.user, new.item, new.ts, new.weight, settle=settle)
            self._pending = {"user": np.union1d(self._pending["user"], users),
                             "item": np.union1d(self._pending["item"], items)}
            self.stats.rewinds += fold.rewinds - rewinds
            self.stats.rebuilds += fold.rebuilds - rebuilds
            self.stats.events += new.num_events
        self._seq = max(self._seq, new.upto)

    def _write_pending(self, conn) -> int:  # type: ignore[no-untyped-def]
        if self._fold is None or self._version_id is None:
            return 0
        parts = []
        for side, idx in self._pending.items():
            if len(idx):
                vectors, updated_at = self._fold.inc.rows(side, idx)
                parts.append((side, idx, vectors, updated_at))
        if parts:
            self.embeddings.write_overlay_nodes(self._version_id, parts, conn=conn)
        return sum(len(p[1]) for p in parts)

    def _load(self, info: VersionInfo) -> None:
        """Rebuild from base ``info`` and fold in every stored event it did not see."""
        snap = self.embeddings.load(info.id, include_updater_state=True, include_overlay=False)
        info = snap.version
        upto = self.graph.ingest_seq()
        if snap.updater_state is not None:
            module = TemporalUpdater.from_bytes(snap.updater_state)
        elif info.dim >= 2:
            # the untrained module starts as ROLAND's degree-weighted moving average of the
            # node and its recent neighbours, a sound update before any training
            module = TemporalUpdater(info.dim, seed=0)
            log.info("%s has no trained updater weights; using the moving-average start",
                     info.name)
        else:  # a 1-d popularity score has no neighbourhood to fold in
            log.warning("%s is 1-dimensional: incremental updates are off until the next "
                        "retrain of an embedding model", info.name)
            self._switch(info, None, upto, (_NONE, _NONE))
            return
        buffers = self._base_buffers(info, upto)  # compact bytes: decoded again on a rebuild

        def make() -> IncrementalUpdater:
            buffer = NeighbourBuffer.from_bytes(buffers)
            return IncrementalUpdater(snap.users, snap.items, module, buffer,
                                      device=self.device)

        fold = OrderedFold(make, self.chunk)
        with self.graph.engine.connect() as conn:
            unseen = event_log.unseen_by(conn, info.ingest_seq, info.cutoff, upto=upto)
        changed = fold.add(unseen.user, unseen.item, unseen.ts, unseen.weight)
        self._switch(info, fold, upto, changed)
        self.stats.replays += 1
        self.stats.replayed_events += unseen.num_events
        log.info("%s: folded in the %d stored events it did not see", info.name,
                 unseen.num_events)

    def _base_buffers(self, info: VersionInfo, upto: int) -> bytes:
        """``NeighbourBuffer.to_bytes()`` of the events base ``info`` saw: those the retrain
        published with it, else (a version from before they were, or another ``N``) built
        from the whole history it saw, as every start did before."""
        stored = self.embeddings.neighbour_buffers(info.id)
        if stored is not None:
            if NeighbourBuffer.stored_num_neighbours(stored) == self.num_neighbours:
                return stored
            log.info("%s's stored neighbour buffers hold a different N than num_neighbours="
                     "%d; rebuilding them from the history", info.name, self.num_neighbours)
        else:
            log.info("%s has no stored neighbour buffers (retrained before they were "
                     "published); rebuilding them from the history it saw", info.name)
        seen = info.ingest_seq if info.ingest_seq is not None else upto
        history = self.graph.snapshot(until=info.cutoff, seq=seen)
        return NeighbourBuffer.from_graph(history, self.num_neighbours).to_bytes()

    def _switch(self, info: VersionInfo, fold: OrderedFold | None, upto: int,
                changed: tuple[np.ndarray, np.ndarray]) -> None:
        """Serve ``info`` from now on; the old base's unwritten rows no longer count."""
        self._version_id, self._fold, self._seq = info.id, fold, upto
        self._pending = {"user": changed[0], "item": changed[1]}

    # ------------------------------------------------------------------ the watcher
    def due(self) -> bool:
        """Whether no sync ran for ``poll_s`` and a new base was activated or events were
        stored since the last one (two small reads, no lock): while batches keep coming,
        their own syncs are enough."""
        if time.monotonic() - self._last_sync < self.poll_s:
            return False
        if self.unsettled:
            return True
        active = self.embeddings.active_version()
        if active is None:
            return False
        return active.id != self._version_id or self.graph.ingest_seq() > self._seq

    def watching(self) -> LiveUpdater:
        """Start the watcher thread (use as ``with live.watching(): loop.run()``): every
        ``poll_s`` it syncs when :meth:`due`, so a new base is replayed and other processes'
        events are folded in without waiting for this process's next batch."""
        if self._watcher is None:
            self._stop_watch.clear()
            self._watcher = threading.Thread(target=self._watch, name="live-update-watch",
                                             daemon=True)
            self._watcher.start()
        return self

    def _watch(self) -> None:
        def stopping() -> bool:
            return self._stop_watch.is_set() or self.should_stop()

        while not self._stop_watch.wait(self.poll_s):
            try:
                if self.due():
                    self.sync(settle=True, should_stop=stopping)
            except Stopped:
                return
            except Exception as exc:  # the next poll (or batch) tries again; say why
                if not is_outage(exc):
                    log.exception("live update on the idle poll failed; retrying in %.1fs",
                                  self.poll_s)
                else:  # sync() waits outages out; only the cheap due() check gets here
                    log.warning("database unavailable on the idle poll: %s",
                                str(exc).splitlines()[0])

    def __enter__(self) -> LiveUpdater:
        return self.watching()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop_watch.set()
        if self._watcher is not None:
            self._watcher.join(timeout=30)
            self._watcher = None
        if self._fold is not None and self._fold.unsettled:
            try:  # leave the overlay canonical; an outage now is not waited out
                self.sync(settle=True, should_stop=lambda: True)
            except Stopped:
                log.warning("the database is down: the last %d events stay folded in arrival "
                            "order until the next sync (a restart rebuilds canonically)",
                            self._fold.unsettled)
