"""MF-BPR (Rendle et al., UAI 2009): one free vector per user and per item, trained by the
same BPR loop as LightGCN; the baseline LightGCN must beat.
"""

from __future__ import annotations

import torch
from torch import nn

from models.base import InteractionGraph
from models.bpr import BPRRecommender


class MFEncoder(nn.Module):
    """Plain user and item embedding tables; ``forward()`` returns them as they are.

    Args:
        num_users: ``U``.
        num_items: ``I``.
        embedding_dim: ``d`` (default: ``64``).
        init_std: std of the normal initialisation (default: ``0.1``).

    >>> enc = MFEncoder(3, 5, embedding_dim=4)
    >>> [t.shape for t in enc()]
    [torch.Size([3, 4]), torch.Size([5, 4])]
    >>> enc
    MFEncoder(num_users=3, num_items=5, embedding_dim=4)
    """

    def __init__(
        self, num_users: int, num_items: int, embedding_dim: int = 64, init_std: float = 0.1
    ) -> None:
        super().__init__()
        self.num_users, self.num_items = num_users, num_items
        self.embedding_dim, self.init_std = embedding_dim, init_std
        self.user = nn.Embedding(num_users, embedding_dim)
        self.item = nn.Embedding(num_items, embedding_dim)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-draw both tables from ``N(0, init_std^2)``."""
        with torch.no_grad():
            for table in (self.user, self.item):
                w = torch.empty(table.weight.shape)
                nn.init.normal_(w, std=self.init_std, generator=generator)
                table.weight.copy_(w)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user.weight, self.item.weight

    def ego_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user.weight, self.item.weight

    def batch(
        self, users: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows of ``users`` ``[B]`` and ``items`` ``[M]``; final and layer-0 are the same."""
        u, i = self.user(users), self.item(items)
        return u, i, u, i

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_users={self.num_users}, num_items={self.num_items}, "
                f"embedding_dim={self.embedding_dim})")


class MFBPR(BPRRecommender):
    """Matrix factorisation trained by BPR: the score is ``<user_u, item_i>``.

    Takes the arguments of :class:`models.bpr.BPRRecommender` (``embedding_dim=64``,
    ``epochs=20``, ``batch_size=2048``, ``lr=1e-3``, ``reg_weight=1e-4``,
    ``negative_sampler="uniform"``, ``patience=3``, ``k=20``, ``seed=0``,
    ``device="auto"``, ``progress=True``, ...).

    >>> g = InteractionGraph.from_arrays([0, 0, 1, 2], [0, 1, 1, 2])
    >>> model = MFBPR(embedding_dim=8, epochs=2, progress=False).fit(g)
    >>> model.user_embeddings().shape, model.item_embeddings().shape
    (torch.Size([3, 8]), torch.Size([3, 8]))
    """

    name = "mf"

    def build_module(
        self, graph: InteractionGraph, generator: torch.Generator, device: torch.device
    ) -> MFEncoder:
        encoder = MFEncoder(graph.num_users, graph.num_items, self.embedding_dim)
        encoder.reset_parameters(generator)
        return encoder.to(device)
