"""The time-varying state of the trend-aware ranker: decayed item counts, item-to-item
transition counts and every user's most recent items, updated event by event.

Everything here is a deterministic function of the events applied, so a process that
rebuilds the state from the store and one that applied the same events one batch at a time
hold the same numbers (up to float rounding).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from models.base import InteractionGraph
from models.trend.affinity import ContentAffinity
from models.trend.content import ItemContent

#: exponent above which the decayed sums are re-referenced to stay far from float64 overflow
_REBASE_EXPONENT = 256.0


class TrendState:
    """Decayed popularity, transitions and recent items, kept current per event.

    Args:
        num_items: catalogue size; grows when :meth:`update` sees a larger item index.
        half_lives: half-lives of the decayed counts, in **seconds**, all finite and > 0.
        window: an event pairs with its user's previous ``window`` events (by time) as a
            transition, counted in both directions. (default: ``5``)
        n_recent: how many of a user's most recent items are kept. (default: ``5``)
        content: the items' tags and release years; with it the state also keeps every
            user's :class:`~models.trend.affinity.ContentAffinity` (:attr:`affinity`).
            (default: ``None``: no content)

    The decayed count of item ``i`` with half-life ``h`` at time ``t`` is
    ``sum_k 2 ** (-(t - t_k) / h)`` over its events ``t_k <= t``; it is stored as a sum
    referenced at :attr:`ref_ts` so that an event costs one addition whatever its order.

    >>> s = TrendState(3, half_lives=(86400.0,))
    >>> _ = s.update([0, 0, 1], [0, 1, 1], [0.0, 0.0, 86400.0])
    >>> s.decayed(86400.0).round(3).tolist()
    [[0.5, 1.5, 0.0]]
    >>> s.transitions.toarray().tolist()        # user 0 went 0 -> 1
    [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    >>> s.recent_items(0).tolist(), s.recent_items(7).tolist()   # newest first
    ([1, 0], [])
    """

    def __init__(
        self,
        num_items: int,
        half_lives: Sequence[float],
        *,
        window: int = 5,
        n_recent: int = 5,
        content: ItemContent | None = None,
    ) -> None:
        if not half_lives or any(not (0 < h < math.inf) for h in half_lives):
            raise ValueError(f"half_lives must be finite seconds > 0, got {tuple(half_lives)}")
        if window < 0 or n_recent < max(window, 1):
            raise ValueError(f"need window >= 0 and n_recent >= max(window, 1), got "
                             f"window={window}, n_recent={n_recent}")
        self.half_lives = tuple(float(h) for h in half_lives)
        self.window, self.n_recent = int(window), int(n_recent)
        self.num_items = int(num_items)
        self.ref_ts: float | None = None
        self.last_ts = -math.inf
        self.sums = np.zeros((len(self.half_lives), self.num_items))
        self.counts = np.zeros(self.num_items)
        self.transitions = sp.csr_matrix((self.num_items, self.num_items))
        self._recent: dict[int, list[tuple[float, int]]] = {}
        self.affinity = None if content is None else ContentAffinity(content)

    def __repr__(self) -> str:
        days = ", ".join(f"{h / 86400:g}d" for h in self.half_lives)
        return (f"TrendState(num_items={self.num_items}, half_lives=({days}), "
                f"window={self.window}, n_recent={self.n_recent}, "
                f"content={self.affinity is not None})")

    @classmethod
    def from_graph(cls, graph: InteractionGraph, half_lives: Sequence[float], *,
                   window: int = 5, n_recent: int = 5,
                   content: ItemContent | None = None) -> TrendState:
        """The state after every event of ``graph`` in time order, built with array
        operations (what :meth:`update` would reach event by event)."""
        state = cls(graph.num_items, half_lives, window=window, n_recent=n_recent,
                    content=content)
        if graph.num_edges == 0:
            return state
        if state.affinity is not None:
            state.affinity.update(graph.user, graph.item, graph.ts)
        order = np.lexsort((graph.ts, graph.user))
        users, items, ts = graph.user[order], graph.item[order], graph.ts[order]
        state.ref_ts = float(graph.ts.max())
        state.last_ts = state.ref_ts
        for h, row in zip(state.half_lives, state.sums, strict=True):
            row += np.bincount(items, weights=np.exp2((ts - state.ref_ts) / h),
                               minlength=state.num_items)
        state.counts += np.bincount(items, minlength=state.num_items)
        rows, cols = [], []
        for d in range(1, state.window + 1):
            same = (users[d:] == users[:-d]) & (items[d:] != items[:-d])
            rows += [items[:-d][same], items[d:][same]]
            cols += [items[d:][same], items[:-d][same]]
        state.transitions = _pairs_matrix(rows, cols, state.num_items)
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ends = np.r_[starts[1:], len(users)]
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            lo = max(s, e - state.n_recent)
            state._recent[int(users[s])] = list(zip(ts[lo:e].tolist(), items[lo:e].tolist(),
                                                    strict=True))
        return state

    def update(self, users: Sequence[int] | np.ndarray, items: Sequence[int] | np.ndarray,
               ts: Sequence[float] | np.ndarray) -> TrendState:
        """Apply events (dense user and item indices, ``ts`` in epoch seconds), in time
        order within the batch; a late event is counted and paired like any other, with its
        user's newest ``window`` items. Returns ``self``."""
        u = np.asarray(users, dtype=np.int64)
        i = np.asarray(items, dtype=np.int64)
        t = np.asarray(ts, dtype=np.float64)
        if not (len(u) == len(i) == len(t)):
            raise ValueError(f"users, items and ts differ in length: {len(u)}, {len(i)}, "
                             f"{len(t)}")
        if len(u) == 0:
            return self
        if (u < 0).any() or (i < 0).any() or not np.isfinite(t).all():
            raise ValueError("user and item indices must be >= 0 and ts finite")
        self._grow(int(i.max()) + 1)
        self._rebase(float(t.max()))
        order = np.argsort(t, kind="stable")
        u, i, t = u[order], i[order], t[order]
        assert self.ref_ts is not None
        for h, row in zip(self.half_lives, self.sums, strict=True):
            np.add.at(row, i, np.exp2((t - self.ref_ts) / h))
        np.add.at(self.counts, i, 1.0)
        if self.affinity is not None:
            self.affinity.update(u, i, t)
        rows: list[int] = []
        cols: list[int] = []
        for user, item, when in zip(u.tolist(), i.tolist(), t.tolist(), strict=True):
            recent = self._recent.setdefault(user, [])
            for _, prev in recent[max(0, len(recent) - self.window):] if self.window else ():
                if prev != item:
                    rows += [prev, item]
                    cols += [item, prev]
            recent.append((when, item))
            if len(recent) > 1 and recent[-2][0] > when:
                recent.sort(key=lambda pair: pair[0])  # stable: arrival order breaks ties
            del recent[: max(0, len(recent) - self.n_recent)]
        if rows:
            self.transitions = self.transitions + _pairs_matrix(
                [np.asarray(rows)], [np.asarray(cols)], self.num_items)
        self.last_ts = max(self.last_ts, float(t[-1]))
        return self

    def decayed(self, t: float) -> np.ndarray:
        """float64 ``[len(half_lives), num_items]``: the decayed counts at time ``t``."""
        if self.ref_ts is None:
            return np.zeros_like(self.sums)
        scale = np.exp2([-(t - self.ref_ts) / h for h in self.half_lives])
        return self.sums * scale[:, None]

    def decayed_one(self, half_life: float, t: float) -> np.ndarray:
        """float64 ``[num_items]``: the decayed counts of one kept half-life (seconds) at
        time ``t``, without computing the others."""
        try:
            row = self.half_lives.index(half_life)
        except ValueError:
            raise ValueError(f"the state keeps half-lives {self.half_lives} s, not "
                             f"{half_life}; build it with the ranker's half-lives") from None
        if self.ref_ts is None:
            return np.zeros(self.num_items)
        return self.sums[row] * np.exp2(-(t - self.ref_ts) / half_life)

    def recent_items(self, user: int) -> np.ndarray:
        """int64 item indices of ``user``'s most recent events, newest first (empty for a
        user without events)."""
        return np.asarray([item for _, item in reversed(self._recent.get(int(user), []))],
                          dtype=np.int64)

    def has_history(self, user: int) -> bool:
        """Whether ``user`` has at least one applied event."""
        return bool(self._recent.get(int(user)))

    @property
    def num_users_seen(self) -> int:
        """How many users have at least one applied event."""
        return len(self._recent)

    def to_bytes(self) -> bytes:
        """The whole state as ``.npz`` bytes (no pickles); :meth:`from_bytes` reverses it."""
        users = sorted(self._recent)
        lengths = [len(self._recent[u]) for u in users]
        pairs = [pair for u in users for pair in self._recent[u]]
        t = self.transitions.tocsr()
        meta = {"half_lives": self.half_lives, "window": self.window,
                "n_recent": self.n_recent, "num_items": self.num_items,
                "ref_ts": self.ref_ts, "last_ts": self.last_ts if self.ref_ts else None}
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            sums=self.sums, counts=self.counts, t_data=t.data, t_indices=t.indices,
            t_indptr=t.indptr, recent_users=np.asarray(users, np.int64),
            recent_lengths=np.asarray(lengths, np.int64),
            recent_ts=np.asarray([p[0] for p in pairs], np.float64),
            recent_items=np.asarray([p[1] for p in pairs], np.int64),
            affinity=np.frombuffer(b"" if self.affinity is None else self.affinity.to_bytes(),
                                   np.uint8))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TrendState:
        """The state saved by :meth:`to_bytes`."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            state = cls(meta["num_items"], meta["half_lives"], window=meta["window"],
                        n_recent=meta["n_recent"])
            state.ref_ts = meta["ref_ts"]
            state.last_ts = -math.inf if meta["last_ts"] is None else meta["last_ts"]
            state.sums, state.counts = z["sums"].copy(), z["counts"].copy()
            n = state.num_items
            state.transitions = sp.csr_matrix(
                (z["t_data"], z["t_indices"], z["t_indptr"]), shape=(n, n))
            ends = np.cumsum(z["recent_lengths"])
            ts, items = z["recent_ts"].tolist(), z["recent_items"].tolist()
            for user, end, length in zip(z["recent_users"].tolist(), ends.tolist(),
                                         z["recent_lengths"].tolist(), strict=True):
                state._recent[user] = list(zip(ts[end - length:end], items[end - length:end],
                                               strict=True))
            if "affinity" in z.files and len(z["affinity"]):
                state.affinity = ContentAffinity.from_bytes(z["affinity"].tobytes())
        return state

    def _grow(self, num_items: int) -> None:
        if num_items <= self.num_items:
            return
        extra = num_items - self.num_items
        self.sums = np.pad(self.sums, ((0, 0), (0, extra)))
        self.counts = np.pad(self.counts, (0, extra))
        t = self.transitions.tocoo()
        self.transitions = sp.csr_matrix((t.data, (t.row, t.col)), shape=(num_items, num_items))
        self.num_items = num_items

    def _rebase(self, t_max: float) -> None:
        """Move :attr:`ref_ts` forward before ``2 ** ((t - ref) / h)`` could overflow."""
        if self.ref_ts is None:
            self.ref_ts = t_max
            return
        exponent = (t_max - self.ref_ts) / min(self.half_lives)
        if exponent > _REBASE_EXPONENT:
            self.sums = self.decayed(t_max)
            self.ref_ts = t_max


def _pairs_matrix(rows: list[np.ndarray], cols: list[np.ndarray], n: int) -> sp.csr_matrix:
    if not rows:
        return sp.csr_matrix((n, n))
    r, c = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(n, n))
