"""LightGCN propagation against dense references, gradients, and the BPR objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.nn import LGConv

from models.base import InteractionGraph
from models.graph_ops import normalized_adjacency, unique_edges
from models.lightgcn import LightGCN, LightGCNEncoder, symmetric_spmm
from models.training import bpr_loss
from tests.models.test_graph_ops import random_graph


def dense_normalized(g: InteractionGraph) -> np.ndarray:
    a = np.zeros((g.num_users, g.num_items))
    a[g.user, g.item] = 1.0
    full = np.block([[np.zeros((g.num_users, g.num_users)), a],
                     [a.T, np.zeros((g.num_items, g.num_items))]])
    deg = full.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1)), 0.0)
    return inv[:, None] * full * inv[None, :]


@pytest.mark.parametrize("num_layers", [0, 1, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_propagation_equals_dense_adjacency_powers(num_layers: int, seed: int) -> None:
    g = random_graph(seed)
    enc = LightGCNEncoder(normalized_adjacency(g), g.num_users, g.num_items, 8, num_layers)
    enc.reset_parameters(torch.Generator().manual_seed(seed))
    e0 = enc.embedding.weight.detach().double().numpy()
    a_hat = dense_normalized(g)
    expected = sum(np.linalg.matrix_power(a_hat, k) @ e0 for k in range(num_layers + 1))
    expected /= num_layers + 1
    users, items = enc()
    np.testing.assert_allclose(users.detach().numpy(), expected[: g.num_users], atol=1e-6)
    np.testing.assert_allclose(items.detach().numpy(), expected[g.num_users:], atol=1e-6)


def test_symmetric_spmm_gradient_matches_dense() -> None:
    g = random_graph(3)
    adj = normalized_adjacency(g)
    x = torch.randn(adj.shape[0], 4, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float32, requires_grad=True)
    w = torch.randn(adj.shape[0], 4, generator=torch.Generator().manual_seed(1))
    (symmetric_spmm(adj, symmetric_spmm(adj, x)) * w).sum().backward()
    x_dense = x.detach().clone().requires_grad_(True)
    d = adj.to_dense()
    ((d @ (d @ x_dense)) * w).sum().backward()
    torch.testing.assert_close(x.grad, x_dense.grad, atol=1e-6, rtol=1e-5)


def test_batch_rows_and_gradients_match_full_propagation() -> None:
    g = random_graph(2)
    enc = LightGCNEncoder(normalized_adjacency(g), g.num_users, g.num_items, 6, 3)
    users, items = torch.tensor([0, 3, 3, 5]), torch.tensor([1, 7, 2, 1, 0])
    weights = torch.randn(4 + 5, 6, generator=torch.Generator().manual_seed(0))
    grads = []
    for fast in (True, False):
        enc.zero_grad()
        if fast:
            u, i, u0, i0 = enc.batch(users, items)
        else:
            uf, itf = enc()
            u, i = uf[users], itf[items]
            u0, i0 = enc.embedding.weight[users], enc.embedding.weight[items + g.num_users]
        ((torch.cat([u, i]) * weights).sum() + torch.cat([u0, i0]).pow(2).sum()).backward()
        grads.append((u.detach(), i.detach(), enc.embedding.weight.grad.clone()))
    for fast, slow in zip(*grads, strict=True):
        torch.testing.assert_close(fast, slow)


def test_pyg_lgconv_computes_the_same_layer() -> None:
    g = random_graph(4)
    adj = normalized_adjacency(g)
    x = torch.randn(adj.shape[0], 5, generator=torch.Generator().manual_seed(0))
    ours = symmetric_spmm(adj, x)
    torch.testing.assert_close(LGConv(normalize=False)(x, adj), ours)
    u, i = unique_edges(g)
    src = torch.from_numpy(np.concatenate([u, i + g.num_users]))
    dst = torch.from_numpy(np.concatenate([i + g.num_users, u]))
    torch.testing.assert_close(LGConv()(x, torch.stack([src, dst])), ours, atol=1e-6, rtol=1e-5)


def test_bpr_loss_regularises_only_the_given_layer0_rows() -> None:
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    ego = (torch.ones(2, 3), torch.zeros(2, 3), 2 * torch.ones(2, 3))
    expected = -torch.nn.functional.logsigmoid(pos - neg).mean() + 0.1 * (6 + 0 + 24) / 2
    torch.testing.assert_close(bpr_loss(pos, neg, ego, 0.1), expected)


def test_encoder_repr_reset_and_device_move() -> None:
    g = random_graph(0)
    enc = LightGCNEncoder(normalized_adjacency(g), g.num_users, g.num_items, 4, 2)
    assert repr(enc) == "LightGCNEncoder(num_users=7, num_items=9, embedding_dim=4, num_layers=2)"
    enc.reset_parameters(torch.Generator().manual_seed(0))
    first = enc.embedding.weight.detach().clone()
    enc.reset_parameters(torch.Generator().manual_seed(0))
    assert torch.equal(first, enc.embedding.weight)
    moved = enc.to("cpu")
    assert moved.adjacency.layout == torch.sparse_csr
    with pytest.raises(ValueError, match="adjacency must be"):
        LightGCNEncoder(normalized_adjacency(g), g.num_users + 1, g.num_items)


def test_fit_without_valid_runs_every_epoch() -> None:
    g = random_graph(5)
    model = LightGCN(embedding_dim=4, epochs=3, batch_size=8, progress=False).fit(g)
    assert len(model.history_.loss) == 3 and model.history_.best_epoch == 3
    assert model.history_.loss[-1] < model.history_.loss[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    g = random_graph(6)
    kwargs = dict(embedding_dim=8, epochs=2, batch_size=8, progress=False)
    cpu = LightGCN(device="cpu", **kwargs).fit(g)
    gpu = LightGCN(device="cuda", **kwargs).fit(g)
    assert gpu.item_embeddings().device.type == "cpu"
    torch.testing.assert_close(cpu.item_embeddings(), gpu.item_embeddings(), atol=1e-4, rtol=1e-3)
