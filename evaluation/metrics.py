"""Per-user top-K ranking metrics and their means, built on ``torch_geometric.metrics``.

Definitions, for a user with positives ``P`` and top-K list ``R`` (binary relevance):

* ``recall@K    = |P ∩ R| / min(|P|, K)`` -- the capped form, so a perfect list scores 1
  even when the user has more than ``K`` positives. PyG's ``LinkPredRecall`` divides by
  ``|P|`` instead, so this module computes recall itself.
* ``precision@K = |P ∩ R| / K``                          (same as ``LinkPredPrecision``)
* ``hit@K       = 1 if |P ∩ R| > 0 else 0``              (same as ``LinkPredHitRatio``)
* ``ndcg@K      = DCG / IDCG``, gains 1 for a positive, discount ``log2(rank + 1)``, IDCG
  over ``min(|P|, K)`` positives                         (same as ``LinkPredNDCG``)
* ``mrr@K       = 1 / rank of the first positive in R``, 0 if none (same as ``LinkPredMRR``)

Catalogue coverage (share of all items that appear in some top-K list) and the mean
training popularity of recommended items come from ``LinkPredCoverage`` and
``LinkPredAveragePopularity``. Per-user values are needed for bootstrap intervals and
slices, which PyG's aggregating metrics do not give (their per-example hook is private and
changed between releases), so per-user values are computed here and PyG's means of the
shared definitions are checked against them on every evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch_geometric.metrics import (
    LinkPredAveragePopularity,
    LinkPredCoverage,
    LinkPredHitRatio,
    LinkPredMetricCollection,
    LinkPredMRR,
    LinkPredNDCG,
    LinkPredPrecision,
)

#: per-user metrics computed at every K, in report order
RANKING_METRICS = ("recall", "ndcg", "hit", "precision", "mrr")
#: metrics whose mean is taken from PyG (same definition as ours)
_PYG = {
    "ndcg": LinkPredNDCG,
    "hit": LinkPredHitRatio,
    "precision": LinkPredPrecision,
    "mrr": LinkPredMRR,
}


def relevance(top_items: Tensor, pos_index: Tensor) -> Tensor:
    """Which recommended items are positives.

    Args:
        top_items: int64 ``[U, K]`` recommended item ids per row, best first, distinct per row.
        pos_index: int64 ``[2, P]`` positives in COO form: (row in ``top_items``, item id).

    Returns:
        bool ``[U, K]``.

    >>> relevance(torch.tensor([[3, 1], [0, 2]]), torch.tensor([[0, 1, 1], [1, 2, 5]]))
    tensor([[False,  True],
            [False,  True]])
    """
    _check(top_items, pos_index)
    n = int(max(top_items.max().item() if top_items.numel() else 0,
                pos_index[1].max().item() if pos_index.numel() else 0)) + 1
    rows = torch.arange(top_items.size(0)).view(-1, 1)
    return torch.isin(rows * n + top_items, pos_index[0] * n + pos_index[1])


def ranking_metrics(
    top_items: Tensor, pos_index: Tensor, ks: Sequence[int] = (10, 20, 50)
) -> dict[str, Tensor]:
    """Per-user recall, NDCG, hit rate, precision and MRR at each ``K`` in ``ks``.

    Args:
        top_items: int64 ``[U, K_max]`` top items per user, best first, distinct per row;
            ``K_max >= max(ks)``.
        pos_index: int64 ``[2, P]`` positives as (row, item); duplicates count once.
        ks: cut-offs. (default: ``(10, 20, 50)``)

    Returns:
        ``{"recall@10": float64 [U], ...}``; NaN for a row without positives (undefined).

    >>> top = torch.tensor([[5, 1, 2, 3]])             # positives 1 and 3, at ranks 2 and 4
    >>> m = ranking_metrics(top, torch.tensor([[0, 0], [1, 3]]), ks=(2, 4))
    >>> [round(float(m[k][0]), 4) for k in ("recall@2", "precision@2", "mrr@2", "ndcg@4")]
    [0.5, 0.5, 0.5, 0.6509]
    """
    ks = _check_ks(ks, top_items.size(1))
    pos_index = torch.unique(pos_index, dim=1) if pos_index.numel() else pos_index
    rel = relevance(top_items, pos_index).to(torch.float64)
    n_pos = torch.bincount(pos_index[0], minlength=top_items.size(0)).to(torch.float64)
    undefined = n_pos == 0
    rank = torch.arange(1, top_items.size(1) + 1, dtype=torch.float64)
    discount = 1.0 / torch.log2(rank + 1.0)
    ideal = torch.cat([torch.zeros(1, dtype=torch.float64), discount.cumsum(0)])
    out: dict[str, Tensor] = {}
    for k in ks:
        r = rel[:, :k]
        hits = r.sum(1)
        values = {
            "recall": hits / n_pos.clamp(max=k).clamp(min=1),
            "ndcg": (r * discount[:k]).sum(1) / ideal[n_pos.clamp(max=k).long()].clamp(min=1e-12),
            "hit": (hits > 0).to(torch.float64),
            "precision": hits / k,
            "mrr": (r / rank[:k]).max(1).values,
        }
        for name in RANKING_METRICS:
            out[f"{name}@{k}"] = values[name].masked_fill(undefined, float("nan"))
    return out


class RankingAccumulator:
    """Collects per-user metrics over batches of users and gives their means.

    Args:
        ks: cut-offs. (default: ``(10, 20, 50)``)
        num_items: catalogue size, for coverage. (default: ``None``, no coverage)
        popularity: float ``[num_items]`` training interaction counts, for the mean
            popularity of recommended items. (default: ``None``, not reported)

    >>> acc = RankingAccumulator(ks=(1,), num_items=4, popularity=torch.tensor([4., 3, 2, 1]))
    >>> _ = acc.update(torch.tensor([[0], [1]]), torch.tensor([[0, 1], [0, 3]]))
    >>> out = acc.compute()
    >>> out["recall@1"], out["hit@1"], out["coverage@1"], out["popularity@1"]
    (0.5, 0.5, 0.5, 3.5)
    """

    def __init__(
        self,
        ks: Sequence[int] = (10, 20, 50),
        *,
        num_items: int | None = None,
        popularity: Tensor | None = None,
    ) -> None:
        self.ks = _check_ks(ks, max(ks) if len(ks) else 0)
        self.num_items = num_items
        self.popularity = popularity
        metrics: dict[str, object] = {}
        for k in self.ks:
            for name, cls in _PYG.items():
                metrics[f"{name}@{k}"] = cls(k)
            if num_items is not None:
                metrics[f"coverage@{k}"] = LinkPredCoverage(k, num_dst_nodes=num_items)
            if popularity is not None:
                pop = popularity.to(torch.get_default_dtype())
                metrics[f"popularity@{k}"] = LinkPredAveragePopularity(k, popularity=pop)
        self._pyg = LinkPredMetricCollection(metrics)  # type: ignore[arg-type]
        self._parts: list[dict[str, Tensor]] = []

    def update(self, top_items: Tensor, pos_index: Tensor) -> dict[str, Tensor]:
        """Add a batch (every row must have a positive); returns its per-user metrics."""
        values = ranking_metrics(top_items, pos_index, self.ks)
        if values[f"recall@{self.ks[0]}"].isnan().any():
            raise ValueError("every evaluated row needs at least one positive item")
        self._pyg.update(top_items, pos_index)
        self._parts.append(values)
        return values

    def per_user(self) -> dict[str, np.ndarray]:
        """float64 ``[num_users_seen]`` per metric, in the order the batches came."""
        if not self._parts:
            return {}
        return {k: torch.cat([p[k] for p in self._parts]).numpy() for k in self._parts[0]}

    def compute(self) -> dict[str, float]:
        """Means over users, coverage and popularity at every K.

        The per-user means are the float64 values of this module, so they agree exactly
        with slices and intervals; PyG's float32 means of the shared definitions must match
        them to 1e-4, else the installed PyG changed a definition and this raises.
        """
        per_user = self.per_user()
        if not per_user:
            raise ValueError("no users were evaluated: call update() with at least one batch")
        pyg = {k: float(v) for k, v in self._pyg.compute().items()}
        out: dict[str, float] = {}
        for k in self.ks:
            for name in RANKING_METRICS:
                key = f"{name}@{k}"
                ours = float(np.mean(per_user[key]))
                if key in pyg and abs(pyg[key] - ours) > 1e-4:
                    raise RuntimeError(
                        f"{key}: torch_geometric gives {pyg[key]:.6f}, the per-user values "
                        f"{ours:.6f}; the installed PyG changed its definition"
                    )
                out[key] = ours
            for extra in ("coverage", "popularity"):
                if f"{extra}@{k}" in pyg:
                    out[f"{extra}@{k}"] = pyg[f"{extra}@{k}"]
        return out


def _check(top_items: Tensor, pos_index: Tensor) -> None:
    if top_items.dim() != 2 or top_items.dtype != torch.int64:
        raise ValueError(f"top_items must be int64 [U, K], got {top_items.dtype} "
                         f"{tuple(top_items.shape)}")
    if pos_index.dim() != 2 or pos_index.size(0) != 2 or pos_index.dtype != torch.int64:
        raise ValueError(f"pos_index must be int64 [2, P], got {pos_index.dtype} "
                         f"{tuple(pos_index.shape)}")
    if top_items.numel() and top_items.min() < 0:
        raise ValueError("top_items holds negative item ids")
    if pos_index.numel() and (pos_index[0].min() < 0 or
                              pos_index[0].max() >= top_items.size(0)):
        raise ValueError("pos_index rows fall outside the rows of top_items")
    srt = top_items.sort(dim=1).values
    if (srt[:, 1:] == srt[:, :-1]).any():
        raise ValueError("a row of top_items repeats an item; top-K lists must be distinct")


def _check_ks(ks: Sequence[int], k_max: int) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) <= 0:
        raise ValueError(f"ks must be positive cut-offs, got {ks}")
    if max(ks) > k_max:
        raise ValueError(f"K={max(ks)} exceeds the {k_max} ranked items per user")
    return tuple(sorted(set(ks)))
