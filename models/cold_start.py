"""The ranking a user with no history gets: items by their events over a recent window.

This is the service's popular fallback for unknown users (``streamrec recommend``) and the
default of :meth:`models.base.Recommender.cold_scores`, so serving and the evaluation rank
cold-start users by one rule: count the events with ``ts > now - window_s`` per item, where
``now`` is the newest event the service holds; order by descending count, ties to the lower
item index; items without an event in the window are not recommended.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: window of the cold-start fallback: 7 days, in seconds
DEFAULT_COLD_WINDOW_S = 7 * 86_400.0


@dataclass(frozen=True)
class RecentPopularity:
    """Item event counts over the last ``window_s`` seconds before the newest event.

    Args:
        window_s: window length in seconds (default: 7 days).

    >>> fallback = RecentPopularity(window_s=10.0)
    >>> counts = fallback.counts(np.array([2, 2, 0, 1]), np.array([0.0, 15, 18, 20]), 4)
    >>> counts.tolist(), fallback.order(counts).tolist()
    ([1, 1, 1, 0], [0, 1, 2])
    """

    window_s: float = DEFAULT_COLD_WINDOW_S

    def __post_init__(self) -> None:
        if not self.window_s > 0:
            raise ValueError(f"window_s must be > 0 seconds, got {self.window_s}")

    def since(self, now: float) -> float:
        """Events with ``ts > since(now)`` count (epoch seconds)."""
        return float(now) - self.window_s

    def counts(self, item: np.ndarray, ts: np.ndarray, num_items: int) -> np.ndarray:
        """int64 ``[num_items]`` events per item in the window ending at ``ts.max()``.

        Args:
            item: int ``[E]`` item indices of the history.
            ts: float ``[E]`` their times, epoch seconds.
            num_items: size of the item index space.
        """
        item, ts = np.asarray(item, np.int64), np.asarray(ts, np.float64)
        if not len(ts):
            return np.zeros(num_items, np.int64)
        inside = ts > self.since(float(ts.max()))
        return np.bincount(item[inside], minlength=num_items).astype(np.int64)

    @staticmethod
    def order(counts: np.ndarray) -> np.ndarray:
        """int64 item indices with a positive count, most counted first, ties to the lower
        index: the list an unknown user is served."""
        counts = np.asarray(counts)
        order = np.lexsort((np.arange(len(counts)), -counts))
        return order[counts[order] > 0].astype(np.int64)


__all__ = ["DEFAULT_COLD_WINDOW_S", "RecentPopularity"]
