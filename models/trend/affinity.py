"""Every user's affinity to item tags and to release ages (the formula is in
:mod:`models.trend.content`), kept current per event."""

from __future__ import annotations

import io
import json

import numpy as np

from models.base import InteractionGraph
from models.trend.content import NUM_AGE_BINS, PRIOR_EVENTS, ItemContent


class ContentAffinity:
    """Per-user tag and release-age counts over the events applied.

    Args:
        content: the items' tags and years (items it does not describe have neither).
        prior_events: prior strength ``s``. (default: :data:`PRIOR_EVENTS`)

    >>> c = ItemContent([["Drama"], ["Comedy"]], [2000, 2000])
    >>> a = ContentAffinity(c).update([0, 0, 1], [0, 0, 1], [0.0, 0.0, 0.0])
    >>> a.content.vocabulary
    ('Comedy', 'Drama')
    >>> g = a.tag_scores(np.array([0, 1, 5]))     # user 5 has no events: 0
    >>> np.sign(g).tolist()
    [[-1.0, 1.0], [1.0, -1.0], [0.0, 0.0]]
    """

    def __init__(self, content: ItemContent, *, prior_events: float = PRIOR_EVENTS) -> None:
        self.content = content
        self.prior_events = float(prior_events)
        n_tags = len(content.vocabulary)
        self.user_tags = np.zeros((0, n_tags), np.float32)
        self.user_ages = np.zeros((0, NUM_AGE_BINS), np.float32)
        self.user_events = np.zeros(0)
        self.tag_totals = np.zeros(n_tags)
        self.age_totals = np.zeros(NUM_AGE_BINS)
        self.events = 0.0

    def __repr__(self) -> str:
        return (f"ContentAffinity(tags={len(self.content.vocabulary)}, "
                f"users={len(self.user_events)}, prior_events={self.prior_events:g})")

    @classmethod
    def from_graph(cls, graph: InteractionGraph, content: ItemContent, *,
                   prior_events: float = PRIOR_EVENTS) -> ContentAffinity:
        """The affinities after every event of ``graph``."""
        return cls(content, prior_events=prior_events).update(graph.user, graph.item, graph.ts)

    def update(self, users: np.ndarray | list[int], items: np.ndarray | list[int],
               ts: np.ndarray | list[float]) -> ContentAffinity:
        """Apply events (dense indices, epoch seconds; any order). Returns ``self``."""
        u = np.asarray(users, dtype=np.int64)
        i = np.asarray(items, dtype=np.int64)
        t = np.asarray(ts, dtype=np.float64)
        if len(u) == 0:
            return self
        self._grow(int(u.max()) + 1)
        content = self.content.padded(int(i.max()) + 1)
        np.add.at(self.user_events, u, 1.0)
        self.events += len(u)
        # an event's tag weights: rows of the item's normalised multi-hot
        w = content.tag_weights[i].tocoo()
        np.add.at(self.user_tags, (u[w.row], w.col), w.data)
        np.add.at(self.tag_totals, w.col, w.data)
        bins = content.age_bins(i, t)
        np.add.at(self.user_ages, (u, bins), 1.0)
        np.add.at(self.age_totals, bins, 1.0)
        return self

    def tag_scores(self, users: np.ndarray) -> np.ndarray:
        """float64 ``[len(users), len(vocabulary)]``: ``a(u, g)`` (0 for users without
        events)."""
        n_ug, n_u = self._rows(self.user_tags, users)
        return _log_ratio(n_ug, n_u, self.tag_totals, self.events, self.prior_events)

    def age_scores(self, users: np.ndarray) -> np.ndarray:
        """float64 ``[len(users), NUM_AGE_BINS]``: the release-age affinities."""
        n_ub, n_u = self._rows(self.user_ages, users)
        return _log_ratio(n_ub, n_u, self.age_totals, self.events, self.prior_events)

    def item_terms(self, users: np.ndarray, items: np.ndarray, t: float
                   ) -> tuple[np.ndarray, np.ndarray]:
        """``(tags, ages)``, each float64 ``[len(users), len(items)]``: the tag term (the
        item's tag weights times the user's tag affinities) and the release-age term at
        time ``t`` (epoch seconds) of every (user, item) pair."""
        items = np.asarray(items, dtype=np.int64)
        content = self.content.padded(int(items.max(initial=-1)) + 1)
        tags = (content.tag_weights[items] @ self.tag_scores(users).T).T
        ages = self.age_scores(users)[:, content.age_bins(items, t)]
        return np.asarray(tags), ages

    def of_user(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """``(tags, ages)``: one user's rows of :meth:`tag_scores` and :meth:`age_scores`."""
        who = np.asarray([user])
        return self.tag_scores(who)[0], self.age_scores(who)[0]

    def one_user_terms(self, user: int, items: np.ndarray, t: float, *,
                       affinities: tuple[np.ndarray, np.ndarray] | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`item_terms` of one user, float64 ``[len(items)]`` each; ``affinities``:
        the user's :meth:`of_user`, when the caller has it already."""
        tags, ages = self.of_user(user) if affinities is None else affinities
        return self.content.tag_dot(items, tags), ages[self.content.age_bins(items, t)]

    def to_bytes(self) -> bytes:
        """``.npz`` bytes with the content; :meth:`from_bytes` reverses it."""
        buffer = io.BytesIO()
        meta = {"prior_events": self.prior_events, "events": self.events}
        np.savez_compressed(buffer, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                            content=np.frombuffer(self.content.to_bytes(), np.uint8),
                            user_tags=self.user_tags, user_ages=self.user_ages,
                            user_events=self.user_events, tag_totals=self.tag_totals,
                            age_totals=self.age_totals)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ContentAffinity:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            out = cls(ItemContent.from_bytes(z["content"].tobytes()),
                      prior_events=meta["prior_events"])
            out.events = meta["events"]
            for name in ("user_tags", "user_ages", "user_events", "tag_totals", "age_totals"):
                setattr(out, name, z[name].copy())
        return out

    def _rows(self, counts: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        users = np.asarray(users, dtype=np.int64)
        known = (users >= 0) & (users < len(self.user_events))
        rows = np.zeros((len(users), counts.shape[1]))
        n_u = np.zeros(len(users))
        rows[known] = counts[users[known]]
        n_u[known] = self.user_events[users[known]]
        return rows, n_u

    def _grow(self, num_users: int) -> None:
        extra = num_users - len(self.user_events)
        if extra <= 0:
            return
        # grow geometrically: a stream of new users must not copy the arrays per batch
        extra = max(extra, len(self.user_events) // 2)
        self.user_tags = np.pad(self.user_tags, ((0, extra), (0, 0)))
        self.user_ages = np.pad(self.user_ages, ((0, extra), (0, 0)))
        self.user_events = np.pad(self.user_events, (0, extra))


def _log_ratio(n_ug: np.ndarray, n_u: np.ndarray, totals: np.ndarray, events: float,
               prior: float) -> np.ndarray:
    p = (totals + 1.0) / (events + len(totals))  # smoothed: an unseen tag is not -inf
    ratio = np.log((n_ug + prior * p) / (n_u[:, None] + prior)) - np.log(p)
    return np.where(n_u[:, None] > 0, ratio, 0.0)  # exactly 0 (not 1e-16) without events
