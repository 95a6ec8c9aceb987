"""TGAT-style temporal attention (Xu et al., ICLR 2020) of a node over its most recent
neighbours: one layer that turns a node's state and its neighbours' states, time gaps and
edge weights into a fresh embedding ``H~`` for the incremental updater.

Unlike TGAT, the values are the neighbours' states themselves (no value projection), and
the heads are mixed by learned convex weights, so ``H~`` starts in the same space as the
base embeddings it is compared with; TGAT's merge network is kept as a residual correction
whose output layer starts at zero. The keys and queries are TGAT's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.time_encoding import TimeEncoding


class TemporalAttention(nn.Module):
    r"""Multi-head attention of a node over its ``N`` latest neighbours.

    Query: the node's state with the time encoding of ``dt = 0``; keys: the neighbours'
    states with the encoding of their gap ``t_batch - t_edge`` (seconds) and the edge
    weight. Head ``h`` attends with
    :math:`\alpha_h = \mathrm{softmax}(q_h k_h^\top / \sqrt{d_k})` over the unpadded
    neighbours and returns :math:`o_h = \sum_j \alpha_{hj} s_j` (``s_j`` a neighbour's
    state); the output is
    :math:`\tilde H = \sum_h \pi_h o_h + \mathrm{MLP}([o_1, \dots, o_H, H])` with learned
    head weights :math:`\pi = \mathrm{softmax}(\theta)` and the MLP's last layer starting
    at zero. Padded neighbours (``mask`` False) get zero weight; a node without any
    neighbour gets :math:`o_h = 0`.

    Args:
        embedding_dim: ``d``, size of node states (default: ``64``).
        time_dim: ``d_t``, size of the :class:`~models.time_encoding.TimeEncoding`
            (default: ``16``).
        num_heads: attention heads (default: ``2``).
        key_dim: ``d_k``, query/key size per head (default: ``32``).
        dropout: dropout on the attention weights while training (default: ``0.0``).

    ``forward(state [B, d], nbr_state [B, N, d], dt [B, N], weight [B, N], mask [B, N])``
    returns ``[B, d]``.

    >>> layer = TemporalAttention(8, time_dim=4)
    >>> nbr, mask = torch.randn(3, 5, 8), torch.zeros(3, 5, dtype=torch.bool)
    >>> mask[:, 0] = True  # one real neighbour each, four padded slots
    >>> out = layer(torch.zeros(3, 8), nbr, torch.zeros(3, 5), torch.ones(3, 5), mask)
    >>> out.shape, bool(torch.allclose(out, nbr[:, 0]))  # untrained: that neighbour's state
    (torch.Size([3, 8]), True)
    >>> layer
    TemporalAttention(embedding_dim=8, time_dim=4, num_heads=2, key_dim=32, dropout=0.0)
    """

    def __init__(
        self, embedding_dim: int = 64, time_dim: int = 16, num_heads: int = 2,
        key_dim: int = 32, dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if min(embedding_dim, time_dim, num_heads, key_dim) < 1:
            raise ValueError(f"embedding_dim, time_dim, num_heads and key_dim must be >= 1, "
                             f"got {embedding_dim}, {time_dim}, {num_heads}, {key_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embedding_dim, self.time_dim = embedding_dim, time_dim
        self.num_heads, self.key_dim, self.dropout = num_heads, key_dim, dropout
        self.time_encoding = TimeEncoding(time_dim)
        self.query = nn.Linear(embedding_dim + time_dim, num_heads * key_dim, bias=False)
        self.key = nn.Linear(embedding_dim + time_dim + 1, num_heads * key_dim, bias=False)
        self.head_logits = nn.Parameter(torch.zeros(num_heads))
        self.merge = nn.Sequential(
            nn.Linear((num_heads + 1) * embedding_dim, embedding_dim, bias=False), nn.ReLU(),
            nn.Linear(embedding_dim, embedding_dim, bias=False),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform queries and keys, equal head weights, default first merge layer and
        a zero last one (draws from torch's global generator: seed it, or use
        :func:`torch.random.fork_rng`, for reproducible weights)."""
        self.time_encoding.reset_parameters()
        nn.init.xavier_uniform_(self.query.weight)
        nn.init.xavier_uniform_(self.key.weight)
        with torch.no_grad():
            self.head_logits.zero_()
        self.merge[0].reset_parameters()
        nn.init.zeros_(self.merge[2].weight)

    def forward(
        self,
        state: torch.Tensor,
        nbr_state: torch.Tensor,
        dt: torch.Tensor,
        weight: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        b, n = mask.shape
        d, h, k = self.embedding_dim, self.num_heads, self.key_dim
        if state.shape != (b, d) or nbr_state.shape != (b, n, d):
            raise ValueError(f"expected state [B, {d}] and nbr_state [B, N, {d}] with B={b}, "
                             f"N={n}; got {tuple(state.shape)} and {tuple(nbr_state.shape)}")
        valid = mask.unsqueeze(-1)
        # Zero the padded slots: masking gives them zero weight, but a NaN or inf there would
        # still poison the weighted sum (0 * inf = NaN).
        nbr_state = nbr_state.masked_fill(~valid, 0.0)
        query = self.query(torch.cat([state, self.time_encoding(state.new_zeros(b))], -1))
        # Padded slots' gaps and weights may be inf or NaN: zero them at [B, N] (cheaper than
        # masking the [B, N, d + t + 1] key input), so every key input is finite and the
        # key projection's gradient stays finite too.
        dt = dt.clamp(min=0).masked_fill(~mask, 0.0)
        weight = weight.to(state.dtype).masked_fill(~mask, 0.0)
        key = self.key(torch.cat([nbr_state, self.time_encoding(dt), weight.unsqueeze(-1)], -1))
        q = query.view(b, h, 1, k)                                   # [B, H, 1, k]
        kk = key.view(b, n, h, k).transpose(1, 2)                    # [B, H, N, k]
        logits = (q @ kk.transpose(-1, -2)).squeeze(2) / math.sqrt(k)  # [B, H, N]
        logits = logits.masked_fill(~mask.unsqueeze(1), float("-inf"))
        empty = ~mask.any(dim=1)
        # A row with every slot masked would softmax to NaN: give it uniform logits; its
        # (zeroed) neighbour states then average to zero.
        logits = logits.masked_fill(empty.view(b, 1, 1), 0.0)
        alpha = F.dropout(torch.softmax(logits, dim=-1), self.dropout, self.training)
        heads = alpha @ nbr_state                                    # [B, H, d]
        mixed = (torch.softmax(self.head_logits, 0).view(1, h, 1) * heads).sum(1)
        return mixed + self.merge(torch.cat([heads.reshape(b, h * d), state], -1))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(embedding_dim={self.embedding_dim}, "
                f"time_dim={self.time_dim}, num_heads={self.num_heads}, key_dim={self.key_dim}, "
                f"dropout={self.dropout})")
