"""The shared data type every model trains on and the interface every recommender offers.

A model sees the user-item graph as flat arrays of dense indices (the graph store assigns
them), never external ids, and answers with embeddings whose inner product is the score.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class InteractionGraph:
    """A bipartite user-item interaction graph as parallel arrays.

    Args:
        user: int64 ``[E]`` dense user indices in ``[0, num_users)``.
        item: int64 ``[E]`` dense item indices in ``[0, num_items)``.
        ts: float64 ``[E]`` event times in epoch **seconds**.
        weight: float32 ``[E]`` positive interaction weights.
        num_users: size of the user index space (may exceed ``user.max() + 1``).
        num_items: size of the item index space.

    >>> g = InteractionGraph.from_arrays([0, 1], [1, 0], [10.0, 20.0], num_users=2, num_items=2)
    >>> g.num_edges, g.time_range()
    (2, (10.0, 20.0))
    """

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    weight: np.ndarray
    num_users: int
    num_items: int

    def __post_init__(self) -> None:
        n = len(self.user)
        if not (len(self.item) == len(self.ts) == len(self.weight) == n):
            raise ValueError(
                f"InteractionGraph arrays differ in length: user={n}, item={len(self.item)}, "
                f"ts={len(self.ts)}, weight={len(self.weight)}"
            )
        if n and (self.user.min() < 0 or self.user.max() >= self.num_users):
            raise ValueError(f"user index out of range [0, {self.num_users})")
        if n and (self.item.min() < 0 or self.item.max() >= self.num_items):
            raise ValueError(f"item index out of range [0, {self.num_items})")

    @classmethod
    def from_arrays(
        cls,
        user: object,
        item: object,
        ts: object | None = None,
        weight: object | None = None,
        *,
        num_users: int | None = None,
        num_items: int | None = None,
    ) -> InteractionGraph:
        """Build a graph from array-likes; ``ts`` defaults to 0 and ``weight`` to 1."""
        u = np.asarray(user, dtype=np.int64)
        i = np.asarray(item, dtype=np.int64)
        t = np.zeros(len(u)) if ts is None else np.asarray(ts, dtype=np.float64)
        w = np.ones(len(u), dtype=np.float32) if weight is None else np.asarray(weight, np.float32)
        nu = int(u.max()) + 1 if num_users is None and len(u) else int(num_users or 0)
        ni = int(i.max()) + 1 if num_items is None and len(i) else int(num_items or 0)
        return cls(u, i, t, w, nu, ni)

    @property
    def num_edges(self) -> int:
        return len(self.user)

    def time_range(self) -> tuple[float, float]:
        """(first, last) event time in epoch seconds; raises on an empty graph."""
        if not self.num_edges:
            raise ValueError("the graph has no interactions")
        return float(self.ts.min()), float(self.ts.max())

    def subset(self, mask: np.ndarray) -> InteractionGraph:
        """The edges selected by a boolean mask ``[E]``, keeping the index spaces."""
        return InteractionGraph(
            self.user[mask], self.item[mask], self.ts[mask], self.weight[mask],
            self.num_users, self.num_items,
        )

    def before(self, t: float) -> InteractionGraph:
        """Edges with ``ts < t`` (a training snapshot)."""
        return self.subset(self.ts < t)

    def concat(self, other: InteractionGraph) -> InteractionGraph:
        """This graph's edges followed by ``other``'s, in the larger of both index spaces.

        >>> a = InteractionGraph.from_arrays([0], [1], [1.0])
        >>> a.concat(InteractionGraph.from_arrays([2], [0], [2.0])).user.tolist()
        [0, 2]
        """
        return InteractionGraph(
            np.concatenate([self.user, other.user]), np.concatenate([self.item, other.item]),
            np.concatenate([self.ts, other.ts]), np.concatenate([self.weight, other.weight]),
            max(self.num_users, other.num_users), max(self.num_items, other.num_items),
        )


class Recommender(ABC):
    """A recommender scores items for users by the inner product of two embedding tables.

    Subclasses keep their constructor arguments under the same names, draw randomness only
    from ``seed`` and train in :meth:`fit`. After ``fit``, :meth:`user_embeddings` and
    :meth:`item_embeddings` return float32 CPU tensors ``[num_users, d]`` and
    ``[num_items, d]`` whose inner products are the scores.
    """

    name: str = "recommender"
    _param_names: tuple[str, ...] = ()  # constructor keywords, see models.model_arguments

    @abstractmethod
    def fit(
        self, graph: InteractionGraph, valid: InteractionGraph | None = None
    ) -> Recommender:
        """Train on ``graph``; ``valid`` (later events) may drive early stopping."""

    @abstractmethod
    def user_embeddings(self) -> torch.Tensor:
        """float32 ``[num_users, d]`` on CPU."""

    @abstractmethod
    def item_embeddings(self) -> torch.Tensor:
        """float32 ``[num_items, d]`` on CPU."""

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """Scores ``[len(users), num_items]`` for dense user indices ``users`` ``[B]``."""
        return self.user_embeddings()[users] @ self.item_embeddings().T

    def hyper_parameters(self) -> dict[str, object]:
        """Constructor arguments, for version metadata and reports."""
        return {}

    def cold_scores(self, history: InteractionGraph) -> torch.Tensor:
        """float32 ``[history.num_items]`` scores for a user with no event in ``history``.

        ``history`` holds every event known at serving time (the model's training events and
        any streamed since). The default is the service's fallback for unknown users,
        :class:`models.cold_start.RecentPopularity` (events per item over the last 7 days),
        so ``streamrec recommend`` and the evaluation rank cold users alike; a model with
        its own cold-user ranking overrides this.
        """
        from models.cold_start import RecentPopularity  # local: keeps this module a leaf

        counts = RecentPopularity().counts(history.item, history.ts, history.num_items)
        return torch.from_numpy(counts.astype(np.float32))

    def recommend(
        self, users: torch.Tensor, k: int = 10, exclude: InteractionGraph | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` items and their scores, both ``[len(users), k]``, best first.

        Items ``exclude`` holds for a user (e.g. the training graph) score ``-inf`` and so come
        last; they appear only when the user has seen more than ``num_items - k`` items.
        """
        scores = self.score(users).clone()
        if not 0 < k <= scores.shape[1]:
            raise ValueError(f"k must be in [1, {scores.shape[1]}] (the item count), got {k}")
        if exclude is not None:
            from models.graph_ops import user_item_csr  # local: graph_ops imports this module

            if exclude.num_items != scores.shape[1]:
                raise ValueError(
                    f"exclude has {exclude.num_items} items but the model scores "
                    f"{scores.shape[1]}; pass the graph the model was trained on"
                )
            csr = user_item_csr(exclude)
            u = users.cpu().numpy()
            known = np.flatnonzero((u >= 0) & (u < csr.num_rows))
            pos, cols = csr.gather_rows(u[known])
            scores[torch.from_numpy(known[pos]), torch.from_numpy(cols)] = float("-inf")
        top = torch.topk(scores, k, dim=1)
        return top.indices, top.values


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; use 'cpu'")
    return resolved
