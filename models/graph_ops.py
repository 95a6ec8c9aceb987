"""Adjacency structures built from an :class:`InteractionGraph`.

CSR arrays (user->item, item->user) feed the random walks, the seen-item filters and the
metrics; the symmetric-normalised bipartite adjacency feeds LightGCN's sparse propagation.
Repeated (user, item) events collapse to one binary edge everywhere in this module.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from models.base import InteractionGraph


@dataclass(frozen=True)
class CSR:
    """A compressed-sparse-row pattern (no values): row ``r`` holds
    ``indices[indptr[r]:indptr[r + 1]]``, sorted ascending.

    Args:
        indptr: int64 ``[num_rows + 1]`` row offsets.
        indices: int64 ``[nnz]`` column indices in ``[0, num_cols)``.
        num_cols: size of the column index space.

    >>> g = InteractionGraph.from_arrays([0, 0, 1], [2, 0, 2], num_items=3)
    >>> csr = user_item_csr(g)
    >>> csr.indptr.tolist(), csr.indices.tolist(), csr.degree().tolist()
    ([0, 2, 3], [0, 2, 2], [2, 1])
    >>> csr.contains(np.array([0, 1]), np.array([2, 0])).tolist()
    [True, False]
    """

    indptr: np.ndarray
    indices: np.ndarray
    num_cols: int

    def __post_init__(self) -> None:
        if self.indptr.ndim != 1 or len(self.indptr) < 1 or self.indptr[0] != 0:
            raise ValueError("CSR indptr must be a 1-D array starting at 0")
        if self.indptr[-1] != len(self.indices):
            raise ValueError(
                f"CSR indptr ends at {self.indptr[-1]} but there are {len(self.indices)} indices"
            )

    @property
    def num_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return len(self.indices)

    def degree(self) -> np.ndarray:
        """int64 ``[num_rows]`` number of entries per row."""
        return np.diff(self.indptr)

    def row_ids(self) -> np.ndarray:
        """int64 ``[nnz]`` the row of every stored entry (the COO row array)."""
        return np.repeat(np.arange(self.num_rows, dtype=np.int64), self.degree())

    @cached_property
    def _keys(self) -> np.ndarray:
        # Sorted because rows ascend and indices ascend within a row.
        return self.row_ids() * self.num_cols + self.indices

    def contains(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """bool ``[n]``: whether each ``(rows[j], cols[j])`` is an entry; O(n log nnz)."""
        keys = np.asarray(rows, dtype=np.int64) * self.num_cols + np.asarray(cols, np.int64)
        if not self.nnz:
            return np.zeros(len(keys), dtype=bool)
        pos = np.minimum(np.searchsorted(self._keys, keys), self.nnz - 1)
        return self._keys[pos] == keys

    def gather_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The entries of ``rows`` ``[n]`` as ``(position in rows, column)``, both ``[m]``."""
        pos, entries = csr_row_entries(self.indptr, rows)
        return pos, self.indices[entries]


def csr_row_entries(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The entries of CSR rows ``rows`` ``[n]``, row after row, as ``(position in rows,
    entry)``, both int64 ``[m]``; ``entry`` indexes the CSR's ``indices`` and values.

    >>> [a.tolist() for a in csr_row_entries(np.array([0, 2, 2, 5]), np.array([2, 1, 0]))]
    [[0, 0, 0, 2, 2], [2, 3, 4, 0, 1]]
    """
    rows = np.asarray(rows, dtype=np.int64)
    start = np.asarray(indptr)[rows].astype(np.int64)
    deg = np.asarray(indptr)[rows + 1] - start
    pos = np.repeat(np.arange(len(rows), dtype=np.int64), deg)
    # Offset of each gathered entry within its row, without a Python loop.
    first = np.repeat(np.cumsum(deg) - deg, deg)
    offset = np.arange(int(deg.sum()), dtype=np.int64) - first
    return pos, np.repeat(start, deg) + offset


def unique_edges(graph: InteractionGraph) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``(user, item)`` pairs ``[E']`` each, sorted by user then item."""
    keys = np.unique(graph.user * max(graph.num_items, 1) + graph.item)
    return keys // max(graph.num_items, 1), keys % max(graph.num_items, 1)


def _csr_from_pairs(rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int) -> CSR:
    order = np.lexsort((cols, rows))
    counts = np.bincount(rows, minlength=num_rows)
    indptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return CSR(indptr, cols[order].astype(np.int64), num_cols)


def user_item_csr(graph: InteractionGraph) -> CSR:
    """Binary user->item adjacency: ``num_users`` rows over ``num_items`` columns."""
    user, item = unique_edges(graph)
    return _csr_from_pairs(user, item, graph.num_users, graph.num_items)


def item_user_csr(graph: InteractionGraph) -> CSR:
    """Binary item->user adjacency: ``num_items`` rows over ``num_users`` columns."""
    user, item = unique_edges(graph)
    return _csr_from_pairs(item, user, graph.num_items, graph.num_users)


def normalized_adjacency(
    graph: InteractionGraph, device: torch.device | str | None = None
) -> torch.Tensor:
    r"""The symmetric-normalised bipartite adjacency :math:`D^{-1/2} A D^{-1/2}` without
    self-loops, as a float32 torch sparse CSR tensor ``[U + I, U + I]``.

    Nodes ``0..U-1`` are users and ``U..U+I-1`` items; an isolated node has an empty row.
    The matrix is symmetric, which :func:`models.lightgcn.symmetric_spmm` relies on.

    >>> g = InteractionGraph.from_arrays([0, 0, 1], [0, 1, 1])
    >>> normalized_adjacency(g).to_dense()[0]
    tensor([0.0000, 0.0000, 0.7071, 0.5000])
    """
    ui, iu = user_item_csr(graph), item_user_csr(graph)
    num_users, num_items = graph.num_users, graph.num_items
    indptr = np.concatenate([ui.indptr, iu.indptr[1:] + ui.nnz])
    cols = np.concatenate([ui.indices + num_users, iu.indices])
    deg = np.concatenate([ui.degree(), iu.degree()]).astype(np.float64)
    inv_sqrt = np.zeros_like(deg)
    np.power(deg, -0.5, out=inv_sqrt, where=deg > 0)
    rows = np.repeat(np.arange(num_users + num_items), np.diff(indptr))
    values = (inv_sqrt[rows] * inv_sqrt[cols]).astype(np.float32)
    adj = sparse_csr(indptr, cols, values, (num_users + num_items, num_users + num_items))
    return adj if device is None else adj.to(device)


def sparse_csr(
    indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, shape: tuple[int, int]
) -> torch.Tensor:
    """A torch sparse CSR tensor from numpy arrays (shared memory, no invariant checks).

    >>> a = sparse_csr(np.array([0, 1, 1]), np.array([1]), np.array([2.0], np.float32), (2, 2))
    >>> a.to_dense()
    tensor([[0., 2.],
            [0., 0.]])
    """
    return torch.sparse_csr_tensor(
        torch.from_numpy(np.ascontiguousarray(indptr, dtype=np.int64)),
        torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64)),
        torch.from_numpy(np.ascontiguousarray(values)), size=shape, check_invariants=False,
    )


def csr_transpose(
    indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, num_cols: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CSR arrays ``(indptr, indices, values)`` of the transpose ``[num_cols, rows]``.

    >>> [a.tolist() for a in csr_transpose(np.array([0, 2, 3]), np.array([0, 1, 1]),
    ...                                    np.array([1.0, 2.0, 3.0]), 2)]
    [[0, 1, 3], [0, 0, 1], [1.0, 2.0, 3.0]]
    """
    rows = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    order = np.argsort(indices, kind="stable")
    t_indptr = np.zeros(num_cols + 1, dtype=np.int64)
    np.cumsum(np.bincount(indices, minlength=num_cols), out=t_indptr[1:])
    return t_indptr, rows[order], values[order]


def item_counts(graph: InteractionGraph) -> np.ndarray:
    """int64 ``[num_items]`` number of events per item (repeats counted)."""
    return np.bincount(graph.item, minlength=graph.num_items).astype(np.int64)


# torch warns once per process that sparse CSR support is "beta". Take that warning here, on
# import in the main thread, rather than from inside a batch-producing worker thread.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.sparse_csr_tensor(torch.tensor([0, 0]), torch.tensor([], dtype=torch.long),
                            torch.tensor([]), size=(1, 1), check_invariants=False)
