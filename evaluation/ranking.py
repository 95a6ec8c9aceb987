"""Turning score matrices into top-K lists: seen-item masking, popularity fallback, top-K.

Shared by the offline protocol and the streaming evaluation so both rank the same way:
masked items score ``-inf``, and ties are broken by the lower item index, so a ranking
does not depend on how ``torch.topk`` orders equal scores.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from models.base import InteractionGraph
from models.graph_ops import csr_row_entries


class SeenItems:
    """For each user, the distinct items they interacted with in a history graph (CSR).

    Args:
        graph: the history; only ``user``, ``item`` and ``num_users`` are used.

    >>> seen = SeenItems(InteractionGraph.from_arrays([0, 0, 2, 0], [3, 1, 1, 3]))
    >>> seen.count.tolist()
    [3, 0, 1]
    >>> rows, items = seen.coo(np.array([2, 0]))
    >>> rows.tolist(), items.tolist()
    ([0, 1, 1], [1, 1, 3])
    """

    def __init__(self, graph: InteractionGraph) -> None:
        users, items = unique_pairs(graph.user, graph.item, graph.num_items)
        self.num_users = graph.num_users
        self.items = items
        self.indptr = np.zeros(graph.num_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(users, minlength=graph.num_users), out=self.indptr[1:])
        #: int64 ``[num_users]`` interaction events per user (repeats included)
        self.count = np.bincount(graph.user, minlength=graph.num_users).astype(np.int64)

    def coo(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in ``users``, item) pairs of the given users' seen items, int64 each.

        Users at or beyond this history's ``num_users`` have seen nothing.
        """
        users = np.asarray(users, dtype=np.int64)
        inside = np.flatnonzero(users < self.num_users)
        pos, entries = csr_row_entries(self.indptr, users[inside])
        return inside[pos], self.items[entries]


def unique_pairs(user: np.ndarray, item: np.ndarray, num_items: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs sorted by user then item, as two int64 arrays.

    >>> [a.tolist() for a in unique_pairs(np.array([1, 0, 1]), np.array([2, 5, 2]), 6)]
    [[0, 1], [5, 2]]
    """
    n = max(int(num_items), 1)
    keys = np.unique(np.asarray(user, dtype=np.int64) * n + np.asarray(item, dtype=np.int64))
    return keys // n, keys % n


def popularity(graph: InteractionGraph, num_items: int | None = None) -> Tensor:
    """float32 ``[num_items]`` number of interaction events per item in ``graph``.

    >>> popularity(InteractionGraph.from_arrays([0, 1, 1], [2, 2, 0], num_items=4)).tolist()
    [1.0, 0.0, 2.0, 0.0]
    """
    n = graph.num_items if num_items is None else num_items
    return torch.from_numpy(np.bincount(graph.item, minlength=n).astype(np.float32))


def check_scores(scores: Tensor, batch: int, num_items: int, who: str) -> Tensor:
    """Validate a score matrix ``[batch, num_items]``; returns a float32 CPU copy.

    >>> check_scores(torch.ones(1, 2, dtype=torch.float64), 1, 2, "model").dtype
    torch.float32
    """
    if not isinstance(scores, Tensor):
        raise TypeError(f"{who}.score() must return a torch.Tensor, got {type(scores).__name__}")
    if tuple(scores.shape) != (batch, num_items):
        raise ValueError(f"{who}.score() returned shape {tuple(scores.shape)}, "
                         f"expected ({batch}, {num_items})")
    scores = scores.detach().to("cpu", torch.float32, copy=True)  # callers mask in place
    if torch.isnan(scores).any() or torch.isposinf(scores).any():
        raise ValueError(f"{who}.score() returned NaN or +inf scores; check the model's training")
    return scores


def mask_(scores: Tensor, rows: np.ndarray, items: np.ndarray) -> Tensor:
    """Set ``scores[rows, items] = -inf`` in place and return ``scores``.

    >>> mask_(torch.zeros(2, 2), np.array([1]), np.array([0])).tolist()
    [[0.0, 0.0], [-inf, 0.0]]
    """
    if len(rows):
        scores[torch.from_numpy(rows), torch.from_numpy(items)] = float("-inf")
    return scores


def top_k(scores: Tensor, k: int) -> Tensor:
    """int64 ``[B, k]`` item indices by descending score, ties to the lower item index.

    >>> top_k(torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]]), 2).tolist()
    [[1, 2], [0, 1]]
    """
    num_items = scores.size(1)
    if not 0 < k <= num_items:
        raise ValueError(f"cannot rank {k} items out of a catalogue of {num_items}")
    vals, idx = torch.topk(scores, min(k + 1, num_items), dim=1)
    if k < num_items:
        tie = vals[:, k - 1] == vals[:, k]
    else:
        tie = torch.zeros(len(vals), dtype=torch.bool)
    # Inside the top k: order by item index, then stably by descending score.
    idx, perm = idx[:, :k].sort(dim=1)
    vals = vals[:, :k].gather(1, perm)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    out = idx.gather(1, order)
    if tie.any():  # equal scores straddle the cut: rank those rows fully
        rows = tie.nonzero().view(-1)
        out[rows] = torch.sort(scores[rows], dim=1, descending=True, stable=True).indices[:, :k]
    return out


def fallback_(scores: Tensor, cold: Tensor, fallback: Tensor) -> Tensor:
    """Replace, in place, the rows flagged in bool ``cold`` ``[B]`` by ``fallback`` ``[I]``.

    >>> fallback_(torch.zeros(2, 2), torch.tensor([True, False]), torch.ones(2)).tolist()
    [[1.0, 1.0], [0.0, 0.0]]
    """
    if cold.any():
        scores[cold] = fallback.to(scores.dtype)
    return scores
