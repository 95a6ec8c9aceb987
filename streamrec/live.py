"""The consumer's update hook: after each stored batch, refresh the touched embeddings.

:class:`LiveUpdater` is called by the ingest loop with each batch's
:class:`~store.graph.WriteResult` (only the newly stored events, after the database commit
and before the offset commit). It keeps an :class:`~models.IncrementalUpdater` on the active
base version and writes the refreshed rows to the overlay in one transaction per batch.

Merge rule (../shared/DESIGN.md): when it sees that a new base (cutoff C) was activated, it
rebuilds its state from that base alone, with neighbour buffers holding the events up to C,
and replays every stored event with ts > C in time order; the batch in hand is part of that
replay, so no event is lost and none is counted twice. A process restart does the same,
which makes the overlay a deterministic function of (base, events after C).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from models.incremental_updater import IncrementalUpdater
from models.neighbour_buffer import NeighbourBuffer
from models.updater import TemporalUpdater
from store.embedding_schema import NoActiveVersionError
from store.embeddings import EmbeddingStore
from store.graph import GraphStore, WriteResult

log = logging.getLogger(__name__)


@dataclass
class LiveStats:
    """Counters of the live updater (for the summary line and metrics)."""

    batches: int = 0
    events: int = 0
    replays: int = 0
    replayed_events: int = 0
    rows_written: int = 0
    seconds: float = 0.0


class LiveUpdater:
    """Keeps overlay rows of the active base fresh, one call per ingested batch.

    Args:
        graph: the graph store (the truth the buffers are rebuilt from).
        embeddings: the embedding store (base versions, updater weights, overlay).
        num_neighbours: recent neighbours per node ``N`` (default 20).
        replay_batch: events per replay step after a new base (default 2000).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    """

    def __init__(
        self,
        graph: GraphStore,
        embeddings: EmbeddingStore,
        *,
        num_neighbours: int = 20,
        replay_batch: int = 2000,
        device: str = "auto",
    ) -> None:
        self.graph = graph
        self.embeddings = embeddings
        self.num_neighbours = num_neighbours
        self.replay_batch = replay_batch
        self.device = device
        self.stats = LiveStats()
        self._version_id: int | None = None
        self._cutoff = -np.inf
        self._inc: IncrementalUpdater | None = None

    @property
    def version_id(self) -> int | None:
        return self._version_id

    def __call__(self, result: WriteResult) -> None:
        started = time.perf_counter()
        active = self.embeddings.active_version()
        if active is None:
            return  # nothing to update before the first retrain
        if active.id != self._version_id:
            self._load(active.id)  # the replay covers this batch's events too
        elif result.stored and self._inc is not None:
            self._apply(result.user, result.item, result.ts, result.weight)
            self.stats.events += result.stored
        self.stats.batches += 1
        self.stats.seconds += time.perf_counter() - started

    def _load(self, version_id: int) -> None:
        """Rebuild from base ``version_id`` and replay the stored events after its cutoff."""
        snap = self.embeddings.load(version_id, include_updater_state=True, include_overlay=False)
        info = snap.version
        self._version_id, self._cutoff = info.id, info.cutoff
        if snap.updater_state is not None:
            module = TemporalUpdater.from_bytes(snap.updater_state)
        elif info.dim >= 2:
            # the untrained module starts as ROLAND's degree-weighted moving average of the
            # node and its recent neighbours, a sound update before any training
            module = TemporalUpdater(info.dim, seed=0)
            log.info("%s has no trained updater weights; using the moving-average start",
                     info.name)
        else:
            self._inc = None  # a 1-d popularity score has no neighbourhood to fold in
            log.warning("%s is 1-dimensional: incremental updates are off until the next "
                        "retrain of an embedding model", info.name)
            return
        history = self.graph.snapshot(until=info.cutoff)
        buffer = NeighbourBuffer.from_graph(history, self.num_neighbours)
        self._inc = IncrementalUpdater(snap.users, snap.items, module, buffer,
                                       device=self.device)
        self.stats.replays += 1
        last = self.graph.last_event_time()
        if last is None or last <= info.cutoff:
            return
        after = self.graph.edges_between(info.cutoff, last)
        for start in range(0, after.num_edges, self.replay_batch):
            sl = slice(start, start + self.replay_batch)
            self._apply(after.user[sl], after.item[sl], after.ts[sl], after.weight[sl])
        self.stats.replayed_events += after.num_edges
        log.info("replayed %d events after the cutoff of %s", after.num_edges, info.name)

    def _apply(self, user: np.ndarray, item: np.ndarray, ts: np.ndarray,
               weight: np.ndarray) -> None:
        if self._inc is None or self._version_id is None or len(user) == 0:
            return
        r = self._inc.update(user, item, ts, weight)
        self.embeddings.write_overlay_nodes(self._version_id, [
            ("user", r.user_idx, r.user_vectors, r.user_updated_at),
            ("item", r.item_idx, r.item_vectors, r.item_updated_at),
        ])
        self.stats.rows_written += len(r.user_idx) + len(r.item_idx)


def make_live_updater(graph: GraphStore, embeddings: EmbeddingStore, **kwargs: object
                      ) -> LiveUpdater | None:
    """A LiveUpdater, or None (with a log line) when no version is active yet."""
    try:
        embeddings.load()
    except NoActiveVersionError:
        log.info("no embedding version yet: the updater starts with the first retrain")
    return LiveUpdater(graph, embeddings, **kwargs)  # type: ignore[arg-type]
