"""A seeded synthetic interaction stream realistic enough to evaluate recommenders on.

It plants the structure real logs have, so that models can win or lose for real reasons:

* users and items arrive over time (new users, new items);
* item popularity is power-law (Pareto weights) and boosted while an item is new;
* user activity is power-law too;
* each item belongs to one of ``n_topics`` tastes and each user prefers a few of them;
  a fraction of users switch taste at a random moment (drift);
* activity follows a daily cycle (quiet at night, busy in the evening, UTC).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from stream.events import Event, derive_event_id

DAY = 86_400.0


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape of the stream; every default is chosen to look like a small real service.

    Attributes:
        n_events: number of events.
        n_users / n_items: size of the populations by the end of the stream
            (default: derived from ``n_events``).
        n_topics: number of latent tastes (default 12).
        start: epoch seconds of the first possible event (default 2024-01-01T00:00Z).
        days: length of the stream in days (default 30).
        initial_share: fraction of users and items present at ``start`` (default 0.6);
            the rest arrive uniformly over the stream.
        drift_share: fraction of users who switch taste once (default 0.3).
        popularity_exponent: Pareto shape of item popularity (default 1.2; smaller = heavier
            head).
        novelty_days: new items get a popularity boost that decays over this many days.
        seed: the only source of randomness.
    """

    n_events: int = 10_000
    n_users: int | None = None
    n_items: int | None = None
    n_topics: int = 12
    start: float = 1_704_067_200.0
    days: float = 30.0
    initial_share: float = 0.6
    drift_share: float = 0.3
    popularity_exponent: float = 1.2
    novelty_days: float = 3.0
    seed: int = 0

    def sizes(self) -> tuple[int, int]:
        users = self.n_users or max(20, int(self.n_events / 25))
        items = self.n_items or max(20, int(self.n_events / 40))
        return users, items


@dataclass(frozen=True)
class SyntheticStream:
    """The generated arrays (time-ordered) plus the planted ground truth.

    ``user``/``item`` are indices into ``user_ids``/``item_ids``; ``ts`` is epoch seconds;
    ``item_topic [n_items]``, ``drift_time [n_users]`` (inf = never) and the taste matrices
    ``taste_before``/``taste_after [n_users, n_topics]`` are the planted truth.
    """

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    item_topic: np.ndarray
    drift_time: np.ndarray
    taste_before: np.ndarray
    taste_after: np.ndarray
    config: SyntheticConfig

    def events(self) -> Iterator[Event]:
        """The stream as validated events (ids ``u<N>``/``i<N>``; deterministic event ids)."""
        for u, i, t in zip(self.user.tolist(), self.item.tolist(), self.ts.tolist(), strict=True):
            uid, iid = f"u{u}", f"i{i}"
            eid = derive_event_id(uid, iid, t, "interaction", 1.0)
            yield Event(eid, uid, iid, t)


def _daily_cycle_times(rng: np.random.Generator, n: int, start: float, days: float) -> np.ndarray:
    """``n`` sorted times with density ~ 1 + 0.8*sin(2*pi*(hour - 12)/24): peak at 18:00."""
    out = np.empty(0)
    while len(out) < n:
        cand = start + rng.random(2 * n) * days * DAY
        hour = (cand % DAY) / 3600.0
        density = (1.0 + 0.8 * np.sin(2 * np.pi * (hour - 12.0) / 24.0)) / 1.8
        out = np.concatenate([out, cand[rng.random(2 * n) < density]])
    return np.sort(np.round(out[:n], 3))


def _arrivals(rng: np.random.Generator, n: int, cfg: SyntheticConfig) -> np.ndarray:
    arrive = cfg.start + rng.random(n) * cfg.days * DAY
    arrive[: int(round(cfg.initial_share * n))] = cfg.start
    return np.sort(arrive)


def _weighted_prefix_choice(
    rng: np.random.Generator, cum_weight: np.ndarray, n_available: np.ndarray
) -> np.ndarray:
    """Pick index j < n_available[k] with probability ~ weight[j], for every k at once."""
    totals = cum_weight[np.maximum(n_available, 1) - 1]
    picks = np.searchsorted(cum_weight, rng.random(len(n_available)) * totals, side="right")
    return np.minimum(picks, np.maximum(n_available, 1) - 1)


def generate(config: SyntheticConfig | None = None, **overrides: object) -> SyntheticStream:
    """Generate a stream; keyword arguments override fields of ``config``.

    >>> s = generate(n_events=500, seed=3)
    >>> len(s.ts), bool(np.all(np.diff(s.ts) >= 0))
    (500, True)
    >>> np.array_equal(s.item, generate(n_events=500, seed=3).item)
    True
    """
    cfg = SyntheticConfig(**{**(config.__dict__ if config else {}), **overrides})  # type: ignore[arg-type]
    if cfg.n_events <= 0:
        raise ValueError("n_events must be positive")
    rng = np.random.default_rng(cfg.seed)
    n_users, n_items = cfg.sizes()
    k = cfg.n_topics

    user_arrival = _arrivals(rng, n_users, cfg)
    item_arrival = _arrivals(rng, n_items, cfg)
    activity = rng.pareto(1.5, n_users) + 1.0
    popularity = rng.pareto(cfg.popularity_exponent, n_items) + 1.0
    item_topic = rng.integers(0, k, n_items)

    taste_before = rng.dirichlet(np.full(k, 0.15), n_users)
    taste_after = rng.dirichlet(np.full(k, 0.15), n_users)
    drifts = rng.random(n_users) < cfg.drift_share
    drift_time = np.where(
        drifts, cfg.start + (0.3 + 0.6 * rng.random(n_users)) * cfg.days * DAY, np.inf
    )

    ts = _daily_cycle_times(rng, cfg.n_events, cfg.start, cfg.days)
    n_users_now = np.searchsorted(user_arrival, ts, side="right")
    user = _weighted_prefix_choice(rng, np.cumsum(activity), n_users_now)
    ts = np.maximum(ts, user_arrival[user])

    taste = np.where((ts >= drift_time[user])[:, None], taste_after[user], taste_before[user])
    topic = (np.cumsum(taste, axis=1) < rng.random(len(ts))[:, None]).sum(axis=1)
    topic = np.minimum(topic, k - 1)

    item = np.empty(len(ts), np.int64)
    for t in range(k):
        members = np.flatnonzero(item_topic == t)  # sorted by arrival, as items are
        sel = np.flatnonzero(topic == t)
        if len(sel) == 0:
            continue
        if len(members) == 0:  # an empty taste falls back to any item
            members = np.arange(n_items)
        available = np.searchsorted(item_arrival[members], ts[sel], side="right")
        # novelty: a second popularity-weighted draw replaces the first with probability
        # exp(-age / novelty), so young items are picked more often than popularity alone says
        cand = _weighted_prefix_choice(rng, np.cumsum(popularity[members]), available)
        alt = _weighted_prefix_choice(rng, np.cumsum(popularity[members]), available)
        age_alt = ts[sel] - item_arrival[members][alt]
        prefer_new = rng.random(len(sel)) < np.exp(-age_alt / (cfg.novelty_days * DAY))
        item[sel] = members[np.where(prefer_new, alt, cand)]
    ts = np.maximum(ts, item_arrival[item])
    order = np.argsort(ts, kind="stable")
    # strictly increasing by >= 1 ms, so no two events share (user, item, ts) and every
    # derived event id is distinct
    steps = np.arange(len(ts)) * 1e-3
    ts = np.round(np.maximum.accumulate(ts[order] - steps) + steps, 3)
    return SyntheticStream(
        user[order].astype(np.int64),
        item[order],
        ts,
        item_topic,
        drift_time,
        taste_before,
        taste_after,
        cfg,
    )
