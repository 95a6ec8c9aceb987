"""PinSage's neural parts: the importance-pooling convolve layer, the item encoder
(learned ids or projected content features, then the layers) and the recency-weighted
pooling that turns item embeddings into user embeddings. :mod:`models.pinsage` trains them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.lightgcn import spmm
from models.pinsage_sampler import Block


class _PooledSpMM(torch.autograd.Function):
    """``adj @ x`` whose backward is ``adj_t @ grad`` with a precomputed transpose."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, adj: torch.Tensor,
                adj_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj_t = adj_t  # type: ignore[attr-defined]
        return spmm(adj, x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, spmm(ctx.adj_t, grad.contiguous())  # type: ignore[attr-defined]


class PinSageConv(nn.Module):
    r"""One PinSage convolve layer (Algorithm 1 of the paper):

    .. math::
        n_u = \sum_{v \in N(u)} \alpha_{uv} \, \mathrm{ReLU}(Q h_v + q), \qquad
        z_u = \frac{\mathrm{ReLU}(W [h_u \| n_u] + w)}{\| \mathrm{ReLU}(W [h_u \| n_u] + w) \|_2}

    where the importance weights :math:`\alpha_{uv}` are normalised visit counts.

    Args:
        in_dim: size of the input representations.
        out_dim: size of the output embedding.
        hidden_dim: size of the transformed neighbour messages (default: ``in_dim``).

    ``forward(h, self_idx [N], nbr_idx [N, K], nbr_w [N, K])`` reads rows of ``h``
    ``[M, in_dim]`` and returns ``[N, out_dim]`` unit (or zero) vectors. Passing ``adj``,
    the same pooling as sparse CSR matrices ``([N, M], [M, N] transpose)``, switches the
    pooling to a sparse matmul whose backward reuses the transpose: several times faster
    in training than the ``embedding_bag`` path used otherwise.

    >>> conv = PinSageConv(4, 8)
    >>> h = torch.randn(3, 4)
    >>> conv(h, torch.tensor([0]), torch.tensor([[1, 2]]), torch.tensor([[0.5, 0.5]])).shape
    torch.Size([1, 8])
    >>> conv
    PinSageConv(in_dim=4, out_dim=8, hidden_dim=4)
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.hidden_dim = hidden_dim if hidden_dim is not None else in_dim
        self.neighbor = nn.Linear(in_dim, self.hidden_dim)  # Q, q
        self.combine = nn.Linear(in_dim + self.hidden_dim, out_dim)  # W, w
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Xavier-uniform weights, zero biases."""
        with torch.no_grad():
            for lin in (self.neighbor, self.combine):
                w = torch.empty(lin.weight.shape)
                nn.init.xavier_uniform_(w, generator=generator)
                lin.weight.copy_(w)
                lin.bias.zero_()

    def forward(
        self, h: torch.Tensor, self_idx: torch.Tensor, nbr_idx: torch.Tensor,
        nbr_w: torch.Tensor, adj: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        messages = F.relu(self.neighbor(h))
        # Weighted sum of the neighbours' messages without materialising [N, K, hidden].
        if adj is not None:
            pooled = _PooledSpMM.apply(adj[0], adj[1], messages)
        else:
            pooled = F.embedding_bag(nbr_idx, messages, per_sample_weights=nbr_w, mode="sum")
        z = F.relu(self.combine(torch.cat([h[self_idx], pooled], dim=-1)))
        return F.normalize(z, dim=-1)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(in_dim={self.in_dim}, out_dim={self.out_dim}, "
                f"hidden_dim={self.hidden_dim})")


class PinSageEncoder(nn.Module):
    """Layer-0 item representations (learned ids, or projected content features) followed
    by ``num_layers`` :class:`PinSageConv` layers.

    Args:
        num_items: ``I``.
        embedding_dim: ``d`` of every layer (default: ``64``).
        num_layers: convolve layers (default: ``2``).
        feature_dim: ``F`` when items have content features ``[I, F]``; then layer 0 is a
            linear projection of them (so unseen items can be embedded) instead of an id
            table (default: ``None``).

    >>> enc = PinSageEncoder(num_items=5, embedding_dim=8)
    >>> nbrs = torch.tensor([[1, 2], [0, 2], [0, 1], [4, 3], [3, 4]])
    >>> enc.full(nbrs, torch.full((5, 2), 0.5)).shape
    torch.Size([5, 8])
    >>> enc
    PinSageEncoder(num_items=5, embedding_dim=8, num_layers=2, feature_dim=None)
    """

    def __init__(
        self, num_items: int, embedding_dim: int = 64, num_layers: int = 2,
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_items, self.embedding_dim = num_items, embedding_dim
        self.num_layers, self.feature_dim = num_layers, feature_dim
        if feature_dim is None:
            self.embedding: nn.Embedding | None = nn.Embedding(num_items, embedding_dim)
            self.projection: nn.Linear | None = None
        else:
            self.embedding, self.projection = None, nn.Linear(feature_dim, embedding_dim)
        self.convs = nn.ModuleList(
            PinSageConv(embedding_dim, embedding_dim) for _ in range(num_layers)
        )
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise every layer (ids from ``N(0, 0.1^2)``), drawing from ``generator``."""
        with torch.no_grad():
            if self.embedding is not None:
                w = torch.empty(self.embedding.weight.shape)
                nn.init.normal_(w, std=0.1, generator=generator)
                self.embedding.weight.copy_(w)
            if self.projection is not None:
                w = torch.empty(self.projection.weight.shape)
                nn.init.xavier_uniform_(w, generator=generator)
                self.projection.weight.copy_(w)
                self.projection.bias.zero_()
        for conv in self.convs:
            conv.reset_parameters(generator)

    def inputs(self, ids: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Layer-0 representations ``[N, d]`` of items ``ids`` ``[N]``."""
        if self.projection is None:
            assert self.embedding is not None
            return self.embedding(ids)
        if features is None:
            raise ValueError("this encoder was built with feature_dim; pass item features")
        return self.projection(features[ids])

    def forward(self, block: Block, features: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings ``[len(block.targets), d]`` of the block's targets."""
        h = self.inputs(block.input_ids, features)
        for conv, layer in zip(self.convs, block.layers, strict=True):
            h = conv(h, layer.self_idx, layer.nbr_idx, layer.nbr_w, (layer.adj, layer.adj_t))
        return h

    def full(
        self, neighbors: torch.Tensor, weights: torch.Tensor,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embeddings ``[I, d]`` of every item, layer by layer over the whole table."""
        ids = torch.arange(self.num_items, device=neighbors.device)
        h = self.inputs(ids, features)
        for conv in self.convs:
            h = conv(h, ids, neighbors, weights)
        return h

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[N, d]`` of brand-new items from their features ``[N, F]`` alone (an
        empty neighbourhood: the pooled message is zero)."""
        if self.projection is None:
            raise ValueError("this encoder learns id embeddings; it cannot embed new items")
        h = self.projection(features)
        rows = torch.arange(len(features), device=features.device).unsqueeze(1)
        zero = torch.zeros(len(features), 1, device=features.device)
        for conv in self.convs:
            h = conv(h, rows[:, 0], rows, zero)
        return h

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_items={self.num_items}, "
                f"embedding_dim={self.embedding_dim}, num_layers={self.num_layers}, "
                f"feature_dim={self.feature_dim})")


def recency_pooled_users(
    user: np.ndarray, item: np.ndarray, ts: np.ndarray, weight: np.ndarray,
    item_emb: torch.Tensor, num_users: int, history: int = 50,
    half_life_seconds: float = 7 * 86400.0,
) -> torch.Tensor:
    """User embeddings ``[num_users, d]``: for each user, the L2-normalised weighted mean of
    the embeddings of their ``history`` most recent items, an event's importance being
    ``weight * 0.5 ** (age / half_life_seconds)`` with ``age`` measured from that user's
    newest event. A user without events gets a zero vector.

    >>> emb = torch.eye(3)
    >>> recency_pooled_users(np.array([0, 0]), np.array([0, 1]), np.array([0.0, 10.0]),
    ...                      np.ones(2, np.float32), emb, 2, half_life_seconds=10.0)
    tensor([[0.4472, 0.8944, 0.0000],
            [0.0000, 0.0000, 0.0000]])
    """
    order = np.lexsort((-ts, user))
    u, i, t, w = user[order], item[order], ts[order], weight[order]
    first = np.searchsorted(u, u, side="left")  # index of each user's newest event
    rank = np.arange(len(u)) - first
    keep = rank < history
    u, i, w = u[keep], i[keep], w[keep] * 0.5 ** ((t[first] - t)[keep] / half_life_seconds)
    out = torch.zeros(num_users, item_emb.shape[1], dtype=item_emb.dtype, device=item_emb.device)
    src = item_emb[torch.from_numpy(i).to(item_emb.device)]
    src = src * torch.from_numpy(w.astype(np.float32)).to(item_emb)[:, None]
    out.index_add_(0, torch.from_numpy(u).to(item_emb.device), src)
    return F.normalize(out, dim=-1)
