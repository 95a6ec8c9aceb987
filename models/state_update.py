"""ROLAND's state update (You et al., KDD 2022): how a node's previous state ``H_{t-1}``
and its fresh embedding ``H~_t`` combine into ``H_t``. Three choices, by name through
:func:`make_state_update`: ``"moving_average"`` (degree-weighted, no parameters),
``"gru"`` (a :class:`torch.nn.GRUCell`, the default) and ``"mlp"``.

Every update has the same call: ``update(prev [B, d], fresh [B, d], deg_old [B],
deg_new [B]) -> [B, d]``, degrees being the node's edge counts before and in the batch.
``history_weight`` (``w``) generalises ROLAND's keep ratio to
``w * deg_old / (w * deg_old + deg_new)``: how many fresh edges one edge of history is worth.

The base embeddings come from a separate full retrain, so an update must stay in their
space and must not wash out a long history with one batch. Both trainable updates
therefore see the degrees and *start* as the moving average, learning corrections from
there: the GRU's update gate starts at ROLAND's keep ratio, the MLP corrects the fresh
embedding inside the moving average and its last layer starts at zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn

STATE_UPDATES = ("moving_average", "gru", "mlp")
_EPS = 1e-3  # log(deg + eps): a node without history gets a strongly negative feature


def keep_ratio(
    deg_old: torch.Tensor, deg_new: torch.Tensor, like: torch.Tensor, history_weight: float = 1.0
) -> torch.Tensor:
    """``w * deg_old / (w * deg_old + deg_new)`` as ``[B, 1]`` in ``like``'s dtype (0 where both
    are 0), ``w`` being ``history_weight``."""
    old = history_weight * deg_old.to(like.dtype).unsqueeze(-1)
    total = old + deg_new.to(like.dtype).unsqueeze(-1)
    return torch.where(total > 0, old / total.clamp(min=1e-12), torch.zeros_like(total))


def log_degrees(deg_old: torch.Tensor, deg_new: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[log(deg_old + 0.001), log(deg_new + 0.001)]`` as ``[B, 2]``."""
    degrees = torch.stack([deg_old, deg_new], dim=-1).to(like.dtype)
    return torch.log(degrees + _EPS)


class StateUpdate(nn.Module):
    """Base of the state updates: ``embedding_dim`` is ``d``, ``history_weight`` the weight
    of one edge of history against one new edge in the keep ratio (default: ``1.0``)."""

    kind = "base"

    def __init__(self, embedding_dim: int, history_weight: float = 1.0) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if not history_weight > 0:
            raise ValueError(f"history_weight must be > 0, got {history_weight}")
        self.embedding_dim, self.history_weight = embedding_dim, history_weight

    def reset_parameters(self) -> None:
        """Re-initialise the parameters (none in the base)."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(embedding_dim={self.embedding_dim}, "
                f"history_weight={self.history_weight})")


class MovingAverageUpdate(StateUpdate):
    r"""ROLAND's moving average:
    :math:`H_t = \kappa H_{t-1} + (1 - \kappa) \tilde H_t` with
    :math:`\kappa = \deg_{old} / (\deg_{old} + \deg_{new})`, so a node with a long history
    moves slowly and a node without one (``deg_old = 0``) takes ``H~`` as it is.

    >>> upd = MovingAverageUpdate(2)
    >>> upd(torch.ones(1, 2), torch.zeros(1, 2), torch.tensor([3.0]), torch.tensor([1.0]))
    tensor([[0.7500, 0.7500]])
    >>> MovingAverageUpdate(2, history_weight=3.0)(  # 3 * 3 / (3 * 3 + 1)
    ...     torch.ones(1, 2), torch.zeros(1, 2), torch.tensor([3.0]), torch.tensor([1.0]))
    tensor([[0.9000, 0.9000]])
    """

    kind = "moving_average"

    def forward(
        self, prev: torch.Tensor, fresh: torch.Tensor, deg_old: torch.Tensor,
        deg_new: torch.Tensor,
    ) -> torch.Tensor:
        keep = keep_ratio(deg_old, deg_new, prev, self.history_weight)
        return keep * prev + (1.0 - keep) * fresh


class GRUUpdate(StateUpdate):
    r"""``H_t = GRUCell(input=[H~_t, log(deg_old + .001), log(deg_new + .001)], hidden=H_{t-1})``.

    Initialised as a moving average that stays in the embedding space: the update gate
    reads only the two degree features, with weights ``+1`` and ``-1`` and bias ``log w``,
    so it starts at :math:`z = \sigma(\log\frac{w (\deg_{old} + .001)}{\deg_{new} + .001})
    \approx \kappa`; the candidate starts as ``tanh(H~_t)`` (identity input weights, zero
    hidden weights); the reset gate has torch's random initialisation. Training may move
    every weight.

    >>> upd = GRUUpdate(4)
    >>> prev, fresh = torch.full((1, 4), 0.2), torch.full((1, 4), -0.2)
    >>> upd(prev, fresh, torch.tensor([99]), torch.tensor([1])).detach().round(decimals=3)
    tensor([[0.1960, 0.1960, 0.1960, 0.1960]])
    >>> upd
    GRUUpdate(embedding_dim=4, history_weight=1.0)
    """

    kind = "gru"

    def __init__(self, embedding_dim: int, history_weight: float = 1.0) -> None:
        super().__init__(embedding_dim, history_weight)
        self.cell = nn.GRUCell(embedding_dim + 2, embedding_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reset gate: torch's GRU initialisation (uniform in ``+-1/sqrt(d)``, from the global
        generator); update gate and candidate: the moving-average start described above."""
        self.cell.reset_parameters()
        d = self.embedding_dim
        with torch.no_grad():  # torch's gate order in the stacked weights: reset, update, new
            update_ih, new_ih = self.cell.weight_ih[d: 2 * d], self.cell.weight_ih[2 * d:]
            update_ih.zero_()
            update_ih[:, d] = 1.0
            update_ih[:, d + 1] = -1.0
            self.cell.weight_hh[d:].zero_()
            self.cell.bias_ih[d:].zero_()
            self.cell.bias_ih[d: 2 * d] = math.log(self.history_weight)
            self.cell.bias_hh[d:].zero_()
            new_ih.zero_()
            new_ih[:, :d].copy_(torch.eye(d))

    def forward(
        self, prev: torch.Tensor, fresh: torch.Tensor, deg_old: torch.Tensor,
        deg_new: torch.Tensor,
    ) -> torch.Tensor:
        return self.cell(torch.cat([fresh, log_degrees(deg_old, deg_new, fresh)], -1), prev)


class MLPUpdate(StateUpdate):
    r"""``H_t = k H_{t-1} + (1 - k) (H~_t + MLP([H_{t-1}, H~_t, log degrees]))`` with ROLAND's
    keep ratio ``k`` (see :class:`MovingAverageUpdate`): a two-layer ReLU network corrects
    the fresh embedding, weighted like it, so a long history is not washed out; its last
    layer starts at zero, so the untrained update is the moving average.

    >>> upd = MLPUpdate(4)
    >>> upd(torch.zeros(2, 4), torch.ones(2, 4), torch.zeros(2), torch.ones(2)).shape
    torch.Size([2, 4])
    """

    kind = "mlp"

    def __init__(self, embedding_dim: int, history_weight: float = 1.0) -> None:
        super().__init__(embedding_dim, history_weight)
        self.mlp = nn.Sequential(
            nn.Linear(2 * embedding_dim + 2, embedding_dim), nn.ReLU(),
            nn.Linear(embedding_dim, embedding_dim),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's default first layer (from the global generator), a zero last layer."""
        self.mlp[0].reset_parameters()
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(
        self, prev: torch.Tensor, fresh: torch.Tensor, deg_old: torch.Tensor,
        deg_new: torch.Tensor,
    ) -> torch.Tensor:
        keep = keep_ratio(deg_old, deg_new, prev, self.history_weight)
        features = torch.cat([prev, fresh, log_degrees(deg_old, deg_new, prev)], -1)
        return keep * prev + (1.0 - keep) * (fresh + self.mlp(features))


_UPDATES: dict[str, type[StateUpdate]] = {
    "moving_average": MovingAverageUpdate, "gru": GRUUpdate, "mlp": MLPUpdate,
}


def make_state_update(kind: str, embedding_dim: int, history_weight: float = 1.0) -> StateUpdate:
    """A state update by name, one of :data:`STATE_UPDATES`.

    >>> make_state_update("moving_average", 8)
    MovingAverageUpdate(embedding_dim=8, history_weight=1.0)
    """
    try:
        cls = _UPDATES[kind]
    except KeyError:
        raise ValueError(f"unknown state update {kind!r}; choose one of {STATE_UPDATES}") from None
    return cls(embedding_dim, history_weight)
