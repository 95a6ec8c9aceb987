"""Negative item samplers for pairwise ranking losses (BPR, max-margin).

Three distributions, selectable by name through :func:`make_negative_sampler`:
``"uniform"`` over the catalogue, ``"popularity"`` with ``p(i) ~ count_i ** alpha``
(word2vec's 0.75 by default) and ``"in_batch"`` (the positives of the other rows of the
batch). Randomness comes from a ``torch.Generator`` seeded by ``seed``; every call may pass
its own generator instead (a batch-producing worker thread does).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

NEGATIVE_SAMPLERS = ("uniform", "popularity", "in_batch")


class NegativeSampler(ABC):
    """Draws negative items for a batch of positive items.

    Args:
        num_items: size of the item index space.
        seed: seed of the sampler's own generator (default: ``0``).

    >>> sampler = make_negative_sampler("uniform", num_items=4, seed=1)
    >>> sampler.sample_shared(torch.tensor([0, 1]), 3).shape
    torch.Size([3])
    """

    name: str = "negative"

    def __init__(self, num_items: int, seed: int = 0) -> None:
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.num_items = num_items
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def _gen(self, generator: torch.Generator | None) -> torch.Generator:
        return self.generator if generator is None else generator

    @abstractmethod
    def sample(
        self, positives: torch.Tensor, num_negatives: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """int64 ``[B, num_negatives]`` negatives for the positives ``[B]`` (CPU)."""

    @abstractmethod
    def sample_shared(
        self, positives: torch.Tensor, num_negatives: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """int64 ``[num_negatives]`` negatives shared by the whole batch ``positives [B]``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_items={self.num_items}, seed={self.seed})"


class UniformNegativeSampler(NegativeSampler):
    """Items drawn uniformly from ``[0, num_items)``, with replacement.

    >>> s = UniformNegativeSampler(num_items=5, seed=0)
    >>> s.sample(torch.tensor([0, 1, 2]), 2).shape
    torch.Size([3, 2])
    """

    name = "uniform"

    def _draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(self.num_items, (n,), generator=generator)

    def sample(
        self, positives: torch.Tensor, num_negatives: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        b = len(positives)
        return self._draw(b * num_negatives, self._gen(generator)).view(b, num_negatives)

    def sample_shared(
        self, positives: torch.Tensor, num_negatives: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return self._draw(num_negatives, self._gen(generator))


class PopularityNegativeSampler(UniformNegativeSampler):
    """Items drawn with probability proportional to ``item_counts ** alpha``.

    Args:
        item_counts: ``[num_items]`` non-negative interaction counts; an item with count 0
            is never drawn.
        alpha: the exponent (default: ``0.75``); 0 gives uniform over seen items.
        seed: generator seed (default: ``0``).

    >>> s = PopularityNegativeSampler(np.array([0, 1, 16]), seed=0)
    >>> bool((s.sample(torch.zeros(100, dtype=torch.long)) > 0).all())
    True
    """

    name = "popularity"

    def __init__(self, item_counts: np.ndarray, alpha: float = 0.75, seed: int = 0) -> None:
        counts = np.asarray(item_counts, dtype=np.float64)
        super().__init__(len(counts), seed)
        if (counts < 0).any() or counts.sum() <= 0:
            raise ValueError("item_counts must be non-negative with a positive sum")
        self.alpha = alpha
        weights = np.where(counts > 0, counts, 0.0) ** alpha * (counts > 0)
        self.probs = torch.from_numpy(weights / weights.sum())
        self._cdf = torch.cumsum(self.probs, 0)

    def _draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(n, generator=generator, dtype=torch.float64) * self._cdf[-1]
        # right=True: an item of probability 0 repeats the previous cdf value and is skipped.
        return torch.searchsorted(self._cdf, u, right=True).clamp_(max=self.num_items - 1)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_items={self.num_items}, alpha={self.alpha}, "
                f"seed={self.seed})")


class InBatchNegativeSampler(NegativeSampler):
    """Negatives are the positives of *other* rows of the same batch (never the row's own
    position), so they follow the data's popularity without any count table.

    >>> s = InBatchNegativeSampler(num_items=10, seed=0)
    >>> pos = torch.tensor([3, 4, 5])
    >>> neg = s.sample(pos, 2)
    >>> bool((neg != pos[:, None]).all())
    True
    """

    name = "in_batch"

    def sample(
        self, positives: torch.Tensor, num_negatives: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        b = len(positives)
        if b < 2:
            raise ValueError("in-batch negatives need a batch of at least 2 positives")
        # Offsets in [1, B) pick a uniformly random *other* row.
        offset = torch.randint(1, b, (b, num_negatives), generator=self._gen(generator))
        rows = (torch.arange(b).unsqueeze(1) + offset) % b
        return positives.cpu()[rows]

    def sample_shared(
        self, positives: torch.Tensor, num_negatives: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if len(positives) < 1:
            raise ValueError("in-batch negatives need a non-empty batch")
        rows = torch.randint(len(positives), (num_negatives,), generator=self._gen(generator))
        return positives.cpu()[rows]


def make_negative_sampler(
    name: str,
    num_items: int,
    *,
    item_counts: np.ndarray | None = None,
    alpha: float = 0.75,
    seed: int = 0,
) -> NegativeSampler:
    """A sampler by name, one of :data:`NEGATIVE_SAMPLERS`.

    ``item_counts`` is required for ``"popularity"``.

    >>> make_negative_sampler("uniform", 10)
    UniformNegativeSampler(num_items=10, seed=0)
    """
    if name == "uniform":
        return UniformNegativeSampler(num_items, seed)
    if name == "popularity":
        if item_counts is None:
            raise ValueError("the 'popularity' sampler needs item_counts")
        if len(item_counts) != num_items:
            raise ValueError(f"item_counts has {len(item_counts)} entries, expected {num_items}")
        return PopularityNegativeSampler(item_counts, alpha, seed)
    if name == "in_batch":
        return InBatchNegativeSampler(num_items, seed)
    raise ValueError(f"unknown negative sampler {name!r}; choose one of {NEGATIVE_SAMPLERS}")
