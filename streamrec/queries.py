"""The query side: recommendations, similar items and embeddings from the merged view.

One :class:`QueryService` holds the active version's merged snapshot, an ANN index over its
items and the id maps in memory; :meth:`QueryService.refresh` reloads them (after a new
version is activated) and :meth:`QueryService.refresh_overlay` applies the overlay rows
written since, in milliseconds rather than a reload's seconds at catalogue scale. With an
:class:`~store.ann_cache.IndexCache`, the processes of a machine share one built HNSW index per
version instead of each building its own. The JSON shapes are those of ../shared/DESIGN.md
and are shared by the CLI and the HTTP API.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.cold_start import DEFAULT_COLD_WINDOW_S, RecentPopularity
from store.ann import ItemIndex
from store.ann_cache import FORMAT, IndexCache
from store.embedding_schema import NoActiveVersionError, VersionInfo
from store.embeddings import EmbeddingSnapshot, EmbeddingStore
from store.graph import GraphStore
from streamrec.trend_serving import ANN_CANDIDATES, ServedRanker

DEFAULT_POPULAR_WINDOW_S = DEFAULT_COLD_WINDOW_S
DEFAULT_OVERLAY_MARGIN_S = 30.0
#: User vectors (sampled with seed 0) that check the ANN index's recall when it is built.
PROBES = 256


class UnknownItem(LookupError):
    """The item id is not in the store (or the served version has no vector for it)."""


class UnknownUser(LookupError):
    """The user id is not in the store (or the served version has no vector for it)."""


@dataclass
class _Served:
    snapshot: EmbeddingSnapshot
    index: ItemIndex
    item_rows: np.ndarray  # index position -> item idx (rows with a vector only)
    row_of_item: np.ndarray  # item idx -> index position, -1 where the item has no vector
    user_ids: list[str]
    item_ids: list[str]
    user_index: dict[str, int]
    item_index: dict[str, int]
    popular: np.ndarray  # item idx, most popular in the recent window first
    popular_counts: np.ndarray
    watermark: float | None  # newest overlay updated_at applied (epoch s)
    popular_at: float  # time.monotonic() of the popularity count
    ranker: ServedRanker | None = None  # the version's trend ranker, if it publishes one


class QueryService:
    """Answers queries from the active embedding version merged with its overlay.

    Args:
        graph: the graph store (seen items, popularity, id maps).
        embeddings: the embedding store.
        popular_window_s: window of the popularity fallback, seconds before the newest
            event (default 7 days).
        popular_refresh_s: :meth:`refresh_overlay` recounts the popularity fallback at most
            this often (default 60 s): the count scans every event of the window.
        ann_backend: ``"faiss"`` (default) or ``"numpy"``.
        ann_options: further :class:`~store.ann.ItemIndex` settings (``exact_threshold``,
            ``ef_search``, ``hnsw_m``, ``hnsw_space`` ...; default: none, its defaults).
        index_cache: share the built HNSW index of each version with the other processes
            that use the same cache (:class:`~store.ann_cache.IndexCache`): :meth:`refresh`
            reads it back when another built it, and builds and publishes it otherwise
            (default: None: every refresh builds its own). Flat and numpy indexes, cheap to
            build, never go through it.
        index_reuse_share: a shared index is read back while at most this share of the items
            are new to it or moved since it was built (they are scored exactly, see
            :meth:`ItemIndex.updated`); past it :meth:`refresh` builds a new one (default:
            0.025, half of :class:`~streamrec.refresher.Refresher`'s ``max_fresh_share``,
            which must stay above it or its rebuilds would read the same index back).
    """

    def __init__(
        self,
        graph: GraphStore,
        embeddings: EmbeddingStore,
        *,
        popular_window_s: float = DEFAULT_POPULAR_WINDOW_S,
        popular_refresh_s: float = 60.0,
        ann_backend: str = "faiss",
        ann_options: dict[str, Any] | None = None,
        index_cache: IndexCache | None = None,
        index_reuse_share: float = 0.025,
    ) -> None:
        self.graph = graph
        self.embeddings = embeddings
        self.popular_window_s = popular_window_s
        self.popular_refresh_s = popular_refresh_s
        self.ann_backend = ann_backend
        self.ann_options = dict(ann_options or {})
        self.index_cache = index_cache
        self.index_reuse_share = index_reuse_share
        self._served: _Served | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Load the active version (with its overlay), rebuild the index and id maps.

        Raises:
            NoActiveVersionError: no version was activated yet (run ``streamrec retrain``).
        """
        snapshot = self.embeddings.load()
        snapshot, index, rows = self._index(snapshot)
        user_ids, item_ids = self.graph.node_ids("user"), self.graph.node_ids("item")
        popular, counts = self._recent_popularity(len(item_ids))
        row_of_item = np.full(max(len(item_ids), len(snapshot.items)), -1, np.int64)
        row_of_item[rows] = np.arange(len(rows))
        ranker = self._ranker(snapshot)
        served = _Served(
            snapshot, index, rows, row_of_item, user_ids, item_ids,
            {u: i for i, u in enumerate(user_ids)}, {t: i for i, t in enumerate(item_ids)},
            popular, counts, snapshot.watermark, time.monotonic(), ranker,
        )
        with self._lock:
            self._served = served

    def _index(self, snapshot: EmbeddingSnapshot
               ) -> tuple[EmbeddingSnapshot, ItemIndex, np.ndarray]:
        """The item index of ``snapshot`` and the item of each of its rows: built here, or
        read from :attr:`index_cache`, in which case the snapshot may be reloaded once (when
        the shared index was built from a newer one) and is returned with it."""
        for attempt in range(2):
            rows = np.flatnonzero(snapshot.mask("item"))
            items = snapshot.items[rows]

            def build(snap: EmbeddingSnapshot = snapshot, items: np.ndarray = items
                      ) -> ItemIndex:
                users = np.flatnonzero(snap.mask("user"))
                probes = users[np.random.default_rng(0).choice(
                    len(users), min(len(users), PROBES), replace=False)]
                return ItemIndex(items, backend=self.ann_backend, **self.ann_options,
                                 probe_queries=snap.users[np.sort(probes)] if len(probes)
                                 else None)

            threshold = self.ann_options.get("exact_threshold", 50_000)
            if self.index_cache is None or self.ann_backend != "faiss" or len(rows) < threshold:
                return snapshot, build(), rows
            got = self.index_cache.get_or_build(
                self._cache_key(snapshot.version), items, rows, build,
                max_fresh_share=self.index_reuse_share, build_if_ahead=attempt > 0,
                **self.ann_options)
            if got is not None:
                index, labels = got
                return snapshot, index, labels
            snapshot = self.embeddings.load()  # older than the shared index's: catch up
        raise AssertionError("unreachable: the second attempt builds")

    def _cache_key(self, version: VersionInfo) -> str:
        """The shared index's key: the version (its id, name and creation time, so that
        another store's version with the same id does not match) and the settings that
        shape the graph."""
        shape = {k: self.ann_options.get(k)
                 for k in ("hnsw_m", "hnsw_space", "ivf_threshold", "ivf_recall", "ivf_max_scan")}
        digest = hashlib.sha256(json.dumps(
            [FORMAT, version.id, version.name, version.created_at, version.model, version.dim,
             shape], sort_keys=True).encode()).hexdigest()[:16]
        return f"{version.name}-{digest}"

    def _ranker(self, snapshot: EmbeddingSnapshot) -> ServedRanker | None:
        """The version's trend ranker: the served one brought up to date when the version is
        the same (a reload to rebuild the index), else loaded and replayed from the store."""
        if not snapshot.version.has_ranker_state:
            return None
        served = self._served.ranker if self._served is not None else None
        if served is not None and served.version.id == snapshot.version.id:
            served.use_item_vectors(snapshot.items)
            served.catch_up(self.graph)
            return served
        return ServedRanker.load(self.graph, self.embeddings, snapshot.version,
                                 item_vectors=snapshot.items)

    def refresh_overlay(self, *, margin_s: float = DEFAULT_OVERLAY_MARGIN_S) -> bool:
        """Apply the overlay rows written since the served snapshot, without reloading the
        version or rebuilding the item index (see :meth:`ItemIndex.updated`); also picks up
        new users and items and, at most every ``popular_refresh_s``, the recent popularity.

        Rows are read by ``updated_at`` (event time) from the newest one served minus
        ``margin_s`` (default 30 s), so a row committed late by a slower partition's writer
        is still seen; re-applying a row is harmless. An older late row waits for the next
        :meth:`refresh`.

        Returns:
            False when there is nothing to refresh incrementally (nothing served yet, or the
            active version changed): call :meth:`refresh`.
        """
        served = self._served
        active = self.embeddings.active_version()
        if served is None or active is None or active.id != served.snapshot.version.id:
            return False
        since = served.watermark - margin_s if served.watermark is not None else -np.inf
        delta = self.embeddings.overlay_since(active.id, since)
        snapshot = served.snapshot.copy().apply(delta) if len(delta.idx) else served.snapshot
        new_users = self.graph.node_ids("user", start=len(served.user_ids))
        new_items = self.graph.node_ids("item", start=len(served.item_ids))
        user_ids, item_ids = served.user_ids + new_users, served.item_ids + new_items
        items = np.unique(delta.idx[delta.kind == "item"])
        index, item_rows = served.index, served.item_rows
        size = max(len(item_ids), int(items.max()) + 1 if len(items) else 0)
        row_of_item = np.pad(served.row_of_item, (0, max(0, size - len(served.row_of_item))),
                             constant_values=-1)  # a copy: the served one stays as it is
        if len(items):
            new = items[row_of_item[items] < 0]  # first vector of these items: new index rows
            row_of_item[new] = len(item_rows) + np.arange(len(new))
            item_rows = np.concatenate([item_rows, new])
            index = index.updated(row_of_item[items], snapshot.items[items])
        popular, counts, popular_at = served.popular, served.popular_counts, served.popular_at
        if time.monotonic() - popular_at >= self.popular_refresh_s:
            popular, counts = self._recent_popularity(len(item_ids))
            popular_at = time.monotonic()
        elif len(counts) < len(item_ids):  # new items: no recent count yet
            counts = np.pad(counts, (0, len(item_ids) - len(counts)))
        user_index, item_index = served.user_index, served.item_index
        if new_users:  # copy-on-write, so readers of the served maps never see them change
            first = len(served.user_ids)
            user_index = {**user_index, **{u: first + n for n, u in enumerate(new_users)}}
        if new_items:
            first = len(served.item_ids)
            item_index = {**item_index, **{t: first + n for n, t in enumerate(new_items)}}
        watermark = served.watermark
        if len(delta.updated_at):
            newest = float(delta.updated_at.max())
            watermark = newest if watermark is None else max(watermark, newest)
        if served.ranker is not None:
            served.ranker.catch_up(self.graph)  # every event committed since, in ingest order
        refreshed = _Served(snapshot, index, item_rows, row_of_item, user_ids, item_ids,
                            user_index, item_index, popular, counts, watermark, popular_at,
                            served.ranker)
        with self._lock:
            self._served = refreshed
        return True

    @property
    def index_fresh_share(self) -> float:
        """Share of the served items scored from updated vectors rather than the built
        index (grows with :meth:`refresh_overlay`; :meth:`refresh` resets it to 0)."""
        return self._served.index.fresh_share if self._served is not None else 0.0

    def _recent_popularity(self, num_items: int) -> tuple[np.ndarray, np.ndarray]:
        last = self.graph.last_event_time()
        if last is None:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        fallback = RecentPopularity(self.popular_window_s)  # the rule models/ documents
        counts = self.graph.item_counts(since=fallback.since(last))
        if len(counts) < num_items:
            counts = np.pad(counts, (0, num_items - len(counts)))
        counts = counts[:num_items]
        return fallback.order(counts), counts

    @property
    def served(self) -> _Served:
        if self._served is None:
            self.refresh()
        assert self._served is not None
        return self._served

    @property
    def version(self) -> str:
        return self.served.snapshot.version.name

    def recommend(self, user_id: str, k: int = 10, *, exclude_seen: bool = True) -> dict:
        """Top-``k`` items for a user; unknown users get recent popularity (``fallback``)."""
        _check_k(k)
        s = self.served
        idx = s.user_index.get(user_id)
        seen = self.graph.items_seen(idx) if idx is not None and exclude_seen else None
        if s.ranker is not None:
            return self._rank(s, s.ranker, user_id, idx, seen, k)
        if idx is None or not s.snapshot.has("user", idx):
            skip = set() if seen is None else set(seen.tolist())
            items = [i for i in s.popular.tolist() if i not in skip][:k]
            return {
                "user_id": user_id,
                "items": [{"item_id": s.item_ids[i], "score": float(s.popular_counts[i])}
                          for i in items],
                "fallback": True,
                "version": s.snapshot.version.name,
            }
        query = s.snapshot.users[idx][None, :]
        exclude = None
        if seen is not None and len(seen):
            rows = s.row_of_item[seen[seen < len(s.row_of_item)]]
            exclude = [rows[rows >= 0]]
        scores, pos = s.index.search(query, k, exclude=exclude)
        return {
            "user_id": user_id,
            "items": _items(s, scores[0], pos[0]),
            "fallback": False,
            "version": s.snapshot.version.name,
        }

    def _rank(self, s: _Served, ranker: ServedRanker, user_id: str, idx: int | None,
              seen: np.ndarray | None, k: int) -> dict:
        """The trend ranker's top-``k``; ``fallback`` when the user has no event (the recent
        trend alone, as the evaluation ranks cold users)."""
        vector = s.snapshot.users[idx] if idx is not None and s.snapshot.has("user", idx) \
            else None
        ann = None
        if vector is not None and ranker.wants_ann:
            _, pos = s.index.search(vector[None, :], min(ANN_CANDIDATES, len(s.item_rows)))
            ann = s.item_rows[pos[0][pos[0] >= 0]]
        items, scores = ranker.recommend(idx, k, seen=seen, user_vector=vector,
                                         ann_candidates=ann)
        return {
            "user_id": user_id,
            "items": [{"item_id": s.item_ids[int(i)], "score": float(sc)}
                      for i, sc in zip(items.tolist(), scores.tolist(), strict=True)
                      if i < len(s.item_ids)],
            "fallback": not ranker.has_events(idx),
            "version": s.snapshot.version.name,
        }

    def similar(self, item_id: str, k: int = 10) -> dict:
        """The ``k`` nearest items by inner product, never the item itself."""
        _check_k(k)
        s = self.served
        idx = s.item_index.get(item_id)
        if idx is None or not s.snapshot.has("item", idx):
            raise UnknownItem(f"unknown item {item_id!r}: not in the store or the served version")
        query = s.snapshot.items[idx][None, :]
        exclude = [np.array([s.row_of_item[idx]])]
        scores, pos = s.index.search(query, k, exclude=exclude)
        return {"item_id": item_id, "items": _items(s, scores[0], pos[0])}

    def embedding(self, kind: str, node_id: str) -> dict:
        """The merged vector of a user or item, with where it came from."""
        s = self.served
        table = s.user_index if kind == "user" else s.item_index
        idx = table.get(node_id)
        if idx is None or not s.snapshot.has(kind, idx):
            error = UnknownUser if kind == "user" else UnknownItem
            raise error(f"unknown {kind} {node_id!r}: not in the store or the served version")
        return {
            "id": node_id,
            "kind": kind,
            "vector": [float(x) for x in s.snapshot.vector(kind, idx)],
            "version": s.snapshot.version.name,
            "source": s.snapshot.source(kind, idx),
            "updated_at": float(s.snapshot.updated_at(kind, idx)),
        }


def _check_k(k: int) -> None:
    if not 1 <= k <= 1000:
        raise ValueError(f"k must be between 1 and 1000, got {k}")


def _items(s: _Served, scores: np.ndarray, pos: np.ndarray) -> list[dict[str, object]]:
    return [
        {"item_id": s.item_ids[int(s.item_rows[p])], "score": float(sc)}
        for sc, p in zip(scores.tolist(), pos.tolist(), strict=True)
        if p >= 0
    ]


__all__ = ["NoActiveVersionError", "QueryService", "UnknownItem", "UnknownUser"]
