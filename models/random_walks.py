"""Vectorised item->user->item random walks over CSR arrays, with restarts, visit counting
and the two things PinSage derives from them: importance neighbourhoods (top-K most visited
items with normalised visit counts) and samples from a band of visit ranks (hard negatives).

Every walker advances in the same numpy operation, so a step costs a handful of array ops
over all ``len(starts) * num_walks`` walkers; there is no per-walker Python loop. With
``restart_prob = a`` the walk is the personalised-PageRank chain: at each step it jumps back
to its start with probability ``a``, else moves to a random item of a random user of the
current item, and its visit frequencies converge to the PPR vector of the start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.base import InteractionGraph
from models.graph_ops import CSR, item_user_csr, user_item_csr


@dataclass(frozen=True)
class RankedVisits:
    """Visit counts per start, most visited first: start ``s`` owns entries
    ``indptr[s]:indptr[s + 1]`` of ``items`` and ``counts`` (ties in random order).

    >>> r = RankedVisits(np.array([0, 2, 3]), np.array([4, 1, 0]), np.array([5, 2, 1]))
    >>> r.ranks().tolist()
    [0, 1, 0]
    """

    indptr: np.ndarray
    items: np.ndarray
    counts: np.ndarray

    def ranks(self) -> np.ndarray:
        """int64 ``[M]`` the 0-based rank of every entry within its start."""
        deg = np.diff(self.indptr)
        return np.arange(len(self.items), dtype=np.int64) - np.repeat(self.indptr[:-1], deg)


class ItemWalker:
    """Random walks on the item graph induced by a bipartite user-item graph.

    Args:
        item_user: item->user CSR (``num_items`` rows).
        user_item: user->item CSR (``num_users`` rows).
        max_chunk_visits: bound on visits held in memory at once by the batched helpers
            (default: ``4_000_000``).

    >>> g = InteractionGraph.from_arrays([0, 0, 1, 1], [0, 1, 1, 2])
    >>> walker = ItemWalker.from_graph(g)
    >>> walks = walker.walk(np.array([0, 2]), 3, 4, rng=np.random.default_rng(0))
    >>> walks.shape
    (2, 3, 4)
    >>> nbrs, w = walker.neighborhoods(np.array([0]), num_walks=20, walk_length=4, top_k=2)
    >>> int(nbrs[0, 0]), float(w.sum())
    (1, 1.0)
    """

    def __init__(self, item_user: CSR, user_item: CSR, max_chunk_visits: int = 4_000_000) -> None:
        if item_user.num_cols != user_item.num_rows or user_item.num_cols != item_user.num_rows:
            raise ValueError("item_user and user_item CSRs do not describe the same graph")
        self.item_user, self.user_item = item_user, user_item
        self.max_chunk_visits = max_chunk_visits
        self._item_deg, self._user_deg = item_user.degree(), user_item.degree()

    @classmethod
    def from_graph(cls, graph: InteractionGraph, max_chunk_visits: int = 4_000_000) -> ItemWalker:
        return cls(item_user_csr(graph), user_item_csr(graph), max_chunk_visits)

    @property
    def num_items(self) -> int:
        return self.item_user.num_rows

    @staticmethod
    def _pick(csr: CSR, deg: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # A uniformly random neighbour of every row; callers guarantee deg[rows] > 0.
        d = deg[rows]
        offset = np.minimum((rng.random(len(rows)) * d).astype(np.int64), d - 1)
        return csr.indices[csr.indptr[rows] + offset]

    def walk(
        self,
        starts: np.ndarray,
        num_walks: int,
        walk_length: int,
        restart_prob: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Items visited at steps ``1..walk_length``: int64 ``[S, num_walks, walk_length]``.

        A step is item -> random user of it -> random item of that user (or, with
        probability ``restart_prob``, back to the start). A walker on an item without users
        stays at its start.
        """
        if not 0.0 <= restart_prob < 1.0:
            raise ValueError(f"restart_prob must be in [0, 1), got {restart_prob}")
        if num_walks < 1 or walk_length < 1:
            raise ValueError("num_walks and walk_length must be >= 1")
        rng = rng if rng is not None else np.random.default_rng(0)
        origin = np.repeat(np.asarray(starts, dtype=np.int64), num_walks)
        if len(origin) and (origin.min() < 0 or origin.max() >= self.num_items):
            raise ValueError(f"start items must be in [0, {self.num_items})")
        out = np.empty((len(origin), walk_length), dtype=np.int64)
        cur = origin.copy()
        for t in range(walk_length):
            nxt = origin.copy()
            move = self._item_deg[cur] > 0
            if restart_prob > 0:
                move &= rng.random(len(cur)) >= restart_prob
            idx = np.flatnonzero(move)
            users = self._pick(self.item_user, self._item_deg, cur[idx], rng)
            nxt[idx] = self._pick(self.user_item, self._user_deg, users, rng)
            out[:, t] = cur = nxt
        return out.reshape(len(origin) // max(num_walks, 1), num_walks, walk_length)

    def ranked_visits(
        self,
        starts: np.ndarray,
        num_walks: int,
        walk_length: int,
        restart_prob: float = 0.0,
        exclude_start: bool = True,
        rng: np.random.Generator | None = None,
    ) -> RankedVisits:
        """Walk from every start and count visits per (start, item), most visited first."""
        rng = rng if rng is not None else np.random.default_rng(0)
        starts = np.asarray(starts, dtype=np.int64)
        walks = self.walk(starts, num_walks, walk_length, restart_prob, rng)
        walks = walks.reshape(len(starts), -1)
        n = self.num_items
        row = np.repeat(np.arange(len(starts), dtype=np.int64), walks.shape[1])
        item = walks.reshape(-1)
        if exclude_start:
            keep = item != starts[row]
            row, item = row[keep], item[keep]
        keys, counts = np.unique(row * n + item, return_counts=True)
        row, item = keys // n, keys % n
        order = np.lexsort((rng.random(len(keys)), -counts, row))
        indptr = np.zeros(len(starts) + 1, dtype=np.int64)
        np.cumsum(np.bincount(row, minlength=len(starts)), out=indptr[1:])
        return RankedVisits(indptr, item[order], counts[order])

    def _chunks(self, starts: np.ndarray, visits_per_start: int) -> list[np.ndarray]:
        size = max(1, self.max_chunk_visits // max(visits_per_start, 1))
        return [starts[lo: lo + size] for lo in range(0, len(starts), size)]

    def neighborhoods(
        self,
        starts: np.ndarray,
        num_walks: int = 10,
        walk_length: int = 10,
        top_k: int = 25,
        restart_prob: float = 0.3,
        seed: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """PinSage importance neighbourhoods of ``starts`` ``[S]``.

        Returns ``neighbors`` int64 ``[S, top_k]`` (the most visited other items, best
        first) and ``weights`` float32 ``[S, top_k]`` (their visit counts normalised to sum
        1 over the kept ones). Missing slots hold the start itself with weight 0.
        """
        rng = np.random.default_rng(seed)
        starts = np.asarray(starts, dtype=np.int64)
        nbrs = np.repeat(starts[:, None], top_k, axis=1)
        weights = np.zeros((len(starts), top_k), dtype=np.float32)
        offset = 0
        for chunk in self._chunks(starts, num_walks * walk_length):
            ranked = self.ranked_visits(chunk, num_walks, walk_length, restart_prob, True, rng)
            rank = ranked.ranks()
            keep = rank < top_k
            row = np.repeat(np.arange(len(chunk)), np.diff(ranked.indptr))[keep] + offset
            nbrs[row, rank[keep]] = ranked.items[keep]
            weights[row, rank[keep]] = ranked.counts[keep]
            offset += len(chunk)
        total = weights.sum(1, keepdims=True)
        np.divide(weights, total, out=weights, where=total > 0)
        return nbrs, weights

    def rank_band_samples(
        self,
        starts: np.ndarray,
        band: tuple[int, int],
        num_samples: int,
        visits_per_start: int,
        restart_prob: float = 0.15,
        walk_length: int = 16,
        seed: int = 0,
    ) -> np.ndarray:
        """int64 ``[S, num_samples]`` items drawn uniformly from visit ranks
        ``[band[0], band[1])`` of personalised-PageRank walks from each start.

        When a start's walks reach fewer distinct items than the band needs, the band
        shrinks to the lower half of what was reached (still "related, but not closely");
        a start that reaches nothing gets uniformly random items.
        """
        lo, hi = band
        if not 0 <= lo < hi:
            raise ValueError(f"band must satisfy 0 <= lo < hi, got {band}")
        rng = np.random.default_rng(seed)
        starts = np.asarray(starts, dtype=np.int64)
        num_walks = max(1, -(-visits_per_start // walk_length))
        out = np.empty((len(starts), num_samples), dtype=np.int64)
        offset = 0
        for chunk in self._chunks(starts, num_walks * walk_length):
            ranked = self.ranked_visits(chunk, num_walks, walk_length, restart_prob, True, rng)
            reached = np.diff(ranked.indptr)
            b_lo = np.minimum(lo, reached // 2)
            b_hi = np.maximum(np.minimum(hi, reached), b_lo + 1)
            pick = b_lo[:, None] + (rng.random((len(chunk), num_samples))
                                    * (b_hi - b_lo)[:, None]).astype(np.int64)
            pick = np.minimum(pick, np.maximum(reached - 1, 0)[:, None])
            idx = np.minimum(ranked.indptr[:-1, None] + pick, max(len(ranked.items) - 1, 0))
            items = ranked.items[idx] if len(ranked.items) else np.zeros_like(idx)
            fallback = rng.integers(0, self.num_items, size=items.shape)
            out[offset: offset + len(chunk)] = np.where(reached[:, None] > 0, items, fallback)
            offset += len(chunk)
        return out
