"""Most-popular baseline, expressed as 1-d embeddings so it fits the inner-product contract.

Every user vector is ``[1]`` and item ``i``'s is ``[count_i / max_j count_j]``, so every
user's ranking is the items by descending event count. The linear scale keeps counts up to
2**24 apart in float32, where ``log1p`` would tie nearby large counts.
"""

from __future__ import annotations

import numpy as np
import torch

from models.base import InteractionGraph, Recommender


class Popularity(Recommender):
    """Ranks items by how many events they received, over all training time or a recent
    window.

    Args:
        window_seconds: count only events with ``ts > last_ts - window_seconds``, where
            ``last_ts`` is the newest event of the training graph; ``None`` counts all
            events (default: ``None``).
        weighted: sum event ``weight`` instead of counting events (default: ``False``).

    ``valid`` is accepted by :meth:`fit` for the common interface and ignored.

    >>> g = InteractionGraph.from_arrays([0, 1, 2, 0], [2, 2, 1, 0], [0, 5, 9, 10])
    >>> Popularity().fit(g).score(torch.tensor([0])).argmax().item()
    2
    >>> Popularity(window_seconds=2).fit(g).counts_.tolist()
    [1.0, 1.0, 0.0]
    """

    name = "popularity"
    _param_names = ("window_seconds", "weighted")

    def __init__(self, window_seconds: float | None = None, weighted: bool = False) -> None:
        if window_seconds is not None and window_seconds <= 0:
            raise ValueError(f"window_seconds must be > 0 or None, got {window_seconds}")
        self.window_seconds, self.weighted = window_seconds, weighted
        self.counts_: np.ndarray | None = None
        self._num_users = 0

    def fit(self, graph: InteractionGraph, valid: InteractionGraph | None = None) -> Popularity:
        """Count the events per item of ``graph`` (optionally in the recent window)."""
        mask = np.ones(graph.num_edges, dtype=bool)
        if self.window_seconds is not None and graph.num_edges:
            mask = graph.ts > graph.time_range()[1] - self.window_seconds
        weights = graph.weight[mask] if self.weighted else None
        self.counts_ = np.bincount(
            graph.item[mask], weights=weights, minlength=graph.num_items
        ).astype(np.float64)
        self._num_users = graph.num_users
        return self

    def _counts(self) -> np.ndarray:
        if self.counts_ is None:
            raise RuntimeError("Popularity is not fitted; call fit(graph) first")
        return self.counts_

    def user_embeddings(self) -> torch.Tensor:
        self._counts()
        return torch.ones(self._num_users, 1)

    def item_embeddings(self) -> torch.Tensor:
        counts = self._counts()
        top = counts.max() if len(counts) and counts.max() > 0 else 1.0
        return torch.from_numpy(counts / top).float().unsqueeze(1)

    def hyper_parameters(self) -> dict[str, object]:
        return {"window_seconds": self.window_seconds, "weighted": self.weighted}

    def __repr__(self) -> str:
        return f"Popularity(window_seconds={self.window_seconds}, weighted={self.weighted})"
