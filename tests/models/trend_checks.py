"""A check shared by the trend-ranker tests."""

from __future__ import annotations

import numpy as np

from models.base import InteractionGraph
from models.trend.serving import TrendTopK


def assert_served_equals_exact(served: TrendTopK, exact: np.ndarray, g: InteractionGraph,
                               k: int = 10, users: list[int] | None = None) -> None:
    """``served.top_k`` of every user of ``exact`` (``[U, I]`` scores; their indices
    ``users``, default ``0 ..``) equals the top-``k`` of the exact row with the user's items
    of ``g`` excluded (ties to the lower index)."""
    for row_index, user in enumerate(range(len(exact)) if users is None else users):
        seen = np.unique(g.item[g.user == user])
        items, scores = served.top_k(user, k, exclude=seen)
        row = exact[row_index].copy()
        row[seen] = -np.inf
        expected = np.lexsort((np.arange(len(row)), -row))[:k]
        np.testing.assert_array_equal(items, expected)
        np.testing.assert_allclose(scores, row[expected], rtol=1e-5)
