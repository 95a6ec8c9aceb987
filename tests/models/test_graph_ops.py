"""CSR builders and the normalised adjacency against dense references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.base import InteractionGraph
from models.graph_ops import (
    item_counts,
    item_user_csr,
    normalized_adjacency,
    unique_edges,
    user_item_csr,
)


def random_graph(seed: int, num_users: int = 7, num_items: int = 9, edges: int = 30):
    rng = np.random.default_rng(seed)
    # num_users/num_items exceed the used range, so isolated nodes exist.
    return InteractionGraph.from_arrays(
        rng.integers(0, num_users - 1, edges), rng.integers(0, num_items - 1, edges),
        rng.uniform(0, 100, edges), num_users=num_users, num_items=num_items,
    )


def dense(g: InteractionGraph) -> np.ndarray:
    a = np.zeros((g.num_users, g.num_items))
    a[g.user, g.item] = 1.0  # repeats collapse to one binary edge
    return a


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_csr_matches_dense_adjacency(seed: int) -> None:
    g = random_graph(seed)
    ui, iu = user_item_csr(g), item_user_csr(g)
    a = dense(g)
    assert ui.num_rows == g.num_users and iu.num_rows == g.num_items
    for r in range(g.num_users):
        row = ui.indices[ui.indptr[r]: ui.indptr[r + 1]]
        assert row.tolist() == np.flatnonzero(a[r]).tolist()
    for c in range(g.num_items):
        col = iu.indices[iu.indptr[c]: iu.indptr[c + 1]]
        assert col.tolist() == np.flatnonzero(a[:, c]).tolist()
    u, i = unique_edges(g)
    assert len(u) == a.sum() and (a[u, i] == 1).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_contains_and_gather_rows(seed: int) -> None:
    g = random_graph(seed)
    csr, a = user_item_csr(g), dense(g)
    rows, cols = np.meshgrid(np.arange(g.num_users), np.arange(g.num_items), indexing="ij")
    assert (csr.contains(rows.ravel(), cols.ravel()) == a.ravel().astype(bool)).all()
    pick = np.array([3, 0, 3, 6])
    pos, got = csr.gather_rows(pick)
    for j, r in enumerate(pick):
        assert got[pos == j].tolist() == np.flatnonzero(a[r]).tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normalized_adjacency_matches_dense_formula(seed: int) -> None:
    g = random_graph(seed)
    a = dense(g)
    full = np.block([[np.zeros((g.num_users, g.num_users)), a],
                     [a.T, np.zeros((g.num_items, g.num_items))]])
    deg = full.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1)), 0.0)
    expected = inv[:, None] * full * inv[None, :]
    adj = normalized_adjacency(g)
    assert adj.layout == torch.sparse_csr and adj.dtype == torch.float32
    np.testing.assert_allclose(adj.to_dense().numpy(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(expected, expected.T)  # symmetric: LightGCN's backward uses it


def test_empty_graph_and_counts() -> None:
    g = InteractionGraph.from_arrays([], [], num_users=3, num_items=2)
    assert user_item_csr(g).nnz == 0
    assert not user_item_csr(g).contains(np.array([0]), np.array([1])).any()
    assert normalized_adjacency(g).to_dense().abs().sum() == 0
    g = InteractionGraph.from_arrays([0, 1, 1], [1, 1, 0])
    assert item_counts(g).tolist() == [1, 2]
