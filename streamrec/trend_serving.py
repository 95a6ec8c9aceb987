"""The served trend-aware ranker: the active version's published state, kept current from
the interactions table by ingest sequence, ranking one user at a time.

The ranker's time-varying state (decayed counts, transitions, recent items) is a
deterministic function of the stored events, so the query side derives it instead of
reading extra rows: the version carries the state over exactly the events its base saw
(``id <= ingest_seq`` and ``ts <= cutoff``); :meth:`ServedRanker.load` applies every other
stored event, and :meth:`ServedRanker.catch_up` each event committed since, by whichever
ingest process, in ingest order. An event is reflected as soon as the service refreshes
after its commit (the change feed wakes it within milliseconds). With item content, items
first stored after the version get their tags and year from the store's ``item_metadata``
before their first event is applied.
"""

from __future__ import annotations

import threading

import numpy as np

from models.trend.serving import TrendTopK, from_bytes
from models.trend.state import TrendState
from store.embedding_schema import VersionInfo
from store.embeddings import EmbeddingStore
from store.event_log import StoredEvents
from store.graph import GraphStore
from store.item_metadata import ItemMetadata

#: nearest items by the base's inner product added as candidates when the score has an
#: embedding term
ANN_CANDIDATES = 100


class ServedRanker:
    """One version's ranker state plus every stored event, ready to rank.

    Use :meth:`load`; then :meth:`catch_up` after new events were committed.
    """

    def __init__(self, version: VersionInfo, top: TrendTopK, seq: int) -> None:
        self.version, self.top, self.seq = version, top, seq
        self._lock = threading.Lock()  # one catch-up at a time; readers never wait

    @classmethod
    def load(cls, graph: GraphStore, embeddings: EmbeddingStore, version: VersionInfo,
             item_vectors: np.ndarray | None = None) -> ServedRanker | None:
        """The ranker of ``version`` with every stored event applied, or ``None`` when the
        version serves plain embeddings."""
        data = embeddings.ranker_state(version.id)
        if data is None:
            return None
        state, params = from_bytes(data)
        unseen = graph.events_unseen_by(version.ingest_seq, version.cutoff)
        _apply(state, unseen, graph)
        top = TrendTopK(state, params, item_vectors=item_vectors)
        return cls(version, top, unseen.upto)

    def catch_up(self, graph: GraphStore) -> int:
        """Apply the events committed since the last call; returns how many."""
        with self._lock:
            new = graph.events_after(self.seq)
            if new.num_events:
                _apply(self.top.state, new, graph)
                self.top.refresh()
            self.seq = max(self.seq, new.upto)
            return new.num_events

    def use_item_vectors(self, item_vectors: np.ndarray | None) -> None:
        """Score the embedding term against these (merged) item vectors from now on."""
        with self._lock:
            self.top.item_vectors = item_vectors
            self.top.refresh()

    def has_events(self, user_idx: int | None) -> bool:
        """Whether the user has at least one stored event."""
        return user_idx is not None and self.top.state.has_history(user_idx)

    def recommend(self, user_idx: int | None, k: int, *, seen: np.ndarray | None,
                  user_vector: np.ndarray | None = None,
                  ann_candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(item indices, scores)``, best first: the trend-aware ranking of a user with
        events, the trend alone for one without (``user_idx=None`` or no events)."""
        who = user_idx if self.has_events(user_idx) else -1
        exclude = np.empty(0, np.int64) if seen is None else seen
        return self.top.top_k(who, k, exclude=exclude,
                              user_vector=user_vector if who >= 0 else None,
                              extra_candidates=() if ann_candidates is None else ann_candidates)

    @property
    def wants_ann(self) -> bool:
        """Whether the score has an embedding term (and so takes ANN candidates)."""
        return bool(self.top.params.embedding_weight) and self.top.item_vectors is not None


def _apply(state: TrendState, events: StoredEvents, graph: GraphStore) -> None:
    if not events.num_events:
        return
    affinity = state.affinity
    if affinity is not None and int(events.item.max()) >= affinity.content.num_items:
        affinity.content = ItemMetadata(graph).extend(affinity.content)
    state.update(events.user, events.item, events.ts)
