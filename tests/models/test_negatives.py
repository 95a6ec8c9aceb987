"""Negative samplers: distributions, determinism, the seen-item filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.base import InteractionGraph
from models.graph_ops import user_item_csr
from models.negatives import (
    NEGATIVE_SAMPLERS,
    InBatchNegativeSampler,
    PopularityNegativeSampler,
    UniformNegativeSampler,
    make_negative_sampler,
)
from models.training import sample_negatives

COUNTS = np.array([0, 1, 5, 20, 100, 3, 0, 40])


def make(name: str, seed: int = 0):
    return make_negative_sampler(name, len(COUNTS), item_counts=COUNTS, seed=seed)


def frequencies(draws: torch.Tensor, n: int) -> np.ndarray:
    return np.bincount(draws.ravel().numpy(), minlength=n) / draws.numel()


@pytest.mark.parametrize("name", NEGATIVE_SAMPLERS)
def test_shapes_ranges_and_seeded_determinism(name: str) -> None:
    pos = torch.tensor([1, 2, 3, 4, 7])
    a, b, c = make(name, 3), make(name, 3), make(name, 4)
    draws = a.sample(pos, 6)
    assert draws.shape == (5, 6) and draws.dtype == torch.int64
    assert ((draws >= 0) & (draws < len(COUNTS))).all()
    assert torch.equal(draws, b.sample(pos, 6))
    assert a.sample_shared(pos, 9).shape == (9,)
    many = torch.arange(200) % len(COUNTS)
    assert not torch.equal(make(name, 3).sample(many, 5), c.sample(many, 5))
    # An explicit generator wins over, and leaves alone, the sampler's own state.
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(a.sample(pos, 4, g1), c.sample(pos, 4, g2))


def test_uniform_is_uniform() -> None:
    s = UniformNegativeSampler(10, seed=0)
    freq = frequencies(s.sample(torch.zeros(20_000, dtype=torch.long), 5), 10)
    np.testing.assert_allclose(freq, 0.1, atol=0.006)


def test_popularity_follows_count_power() -> None:
    s = PopularityNegativeSampler(COUNTS, alpha=0.75, seed=0)
    expected = COUNTS ** 0.75 / (COUNTS ** 0.75).sum()
    freq = frequencies(s.sample_shared(torch.zeros(1, dtype=torch.long), 100_000), len(COUNTS))
    np.testing.assert_allclose(freq, expected, atol=0.006)
    assert freq[0] == freq[6] == 0  # never an item without interactions
    flat = frequencies(PopularityNegativeSampler(COUNTS, alpha=0.0).sample_shared(
        torch.zeros(1, dtype=torch.long), 60_000), len(COUNTS))
    np.testing.assert_allclose(flat[COUNTS > 0], 1 / 6, atol=0.01)


def test_in_batch_draws_other_rows_uniformly() -> None:
    s = InBatchNegativeSampler(100, seed=0)
    pos = torch.tensor([10, 11, 12, 13])
    neg = s.sample(pos, 3000)
    assert (neg != pos[:, None]).all()
    for row in range(4):
        freq = frequencies(neg[row] - 10, 4)
        assert freq[row] == 0
        np.testing.assert_allclose(np.delete(freq, row), 1 / 3, atol=0.04)
    assert set(s.sample_shared(pos, 50).tolist()) <= set(pos.tolist())
    with pytest.raises(ValueError, match="at least 2"):
        s.sample(torch.tensor([1]))


def test_factory_errors() -> None:
    with pytest.raises(ValueError, match="unknown negative sampler"):
        make_negative_sampler("hard", 5)
    with pytest.raises(ValueError, match="needs item_counts"):
        make_negative_sampler("popularity", 5)
    with pytest.raises(ValueError, match="non-negative"):
        PopularityNegativeSampler(np.zeros(3))


@pytest.mark.parametrize("name", NEGATIVE_SAMPLERS)
def test_training_negatives_avoid_seen_items(name: str) -> None:
    # User u has seen every item but u's "free" item (u + 4) % 8, so redraws are needed.
    users = np.repeat(np.arange(4), 7)
    items = np.concatenate([np.delete(np.arange(8), (u + 4) % 8) for u in range(4)])
    g = InteractionGraph.from_arrays(users, items, num_items=8)
    s = make_negative_sampler(name, 8, item_counts=np.ones(8), seed=0)
    u = torch.arange(4).repeat(50)
    pos = torch.tensor([0, 1, 2, 3]).repeat(50)
    neg = sample_negatives(s, u, pos, user_item_csr(g), torch.Generator().manual_seed(0),
                           max_rounds=200)
    if name == "in_batch":  # only the batch's positives are candidates; none is free
        assert set(neg.tolist()) <= set(pos.tolist())
    else:
        assert neg.tolist() == ((u + 4) % 8).tolist()
