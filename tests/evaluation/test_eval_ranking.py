"""Masking, top-K with deterministic ties, seen items, bootstrap intervals."""

import numpy as np
import pytest
import torch

from evaluation.bootstrap import bootstrap_ci
from evaluation.ranking import SeenItems, check_scores, fallback_, mask_, top_k
from models.base import InteractionGraph


def test_top_k_breaks_ties_by_lower_index_even_across_the_cut():
    scores = torch.tensor([[0.0, 5.0, 5.0, 5.0, 1.0],
                           [3.0, 1.0, 2.0, 0.0, 9.0]])
    assert top_k(scores, 2).tolist() == [[1, 2], [4, 0]]
    assert top_k(scores, 5).tolist() == [[1, 2, 3, 4, 0], [4, 0, 2, 1, 3]]
    with pytest.raises(ValueError, match="catalogue of 5"):
        top_k(scores, 6)


def test_top_k_matches_a_full_stable_sort_on_random_ties():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (50, 30), generator=gen).float()
    full = torch.sort(scores, dim=1, descending=True, stable=True).indices
    for k in (1, 5, 30):
        assert torch.equal(top_k(scores, k), full[:, :k])


def test_masked_items_are_never_recommended():
    seen = SeenItems(InteractionGraph.from_arrays([0, 0, 1], [0, 2, 1], num_items=4))
    scores = torch.tensor([[9.0, 1.0, 8.0, 0.0], [5.0, 7.0, 0.0, 1.0]])
    mask_(scores, *seen.coo(np.array([0, 1])))
    assert top_k(scores, 2).tolist() == [[1, 3], [0, 3]]
    rows, items = seen.coo(np.array([1, 5]))  # 5 is beyond the history: nothing seen
    assert rows.tolist() == [0] and items.tolist() == [1]


def test_fallback_and_score_checks():
    scores = torch.zeros(2, 3)
    fallback_(scores, torch.tensor([False, True]), torch.tensor([1.0, 2.0, 3.0]))
    assert scores.tolist() == [[0, 0, 0], [1, 2, 3]]
    with pytest.raises(ValueError, match="shape"):
        check_scores(torch.zeros(2, 4), 2, 3, "M")
    with pytest.raises(ValueError, match="NaN"):
        check_scores(torch.tensor([[float("nan")]]), 1, 1, "M")
    with pytest.raises(TypeError, match="torch.Tensor"):
        check_scores(np.zeros((1, 1)), 1, 1, "M")


def test_bootstrap_is_seeded_and_handles_undefined_values():
    values = np.random.default_rng(0).random((200, 2))
    values[::2, 1] = np.nan
    a = bootstrap_ci(values, n_boot=300, seed=3)
    assert np.array_equal(a, bootstrap_ci(values, n_boot=300, seed=3))
    assert not np.array_equal(a, bootstrap_ci(values, n_boot=300, seed=4))
    assert a[0, 0] < values[:, 0].mean() < a[0, 1]
    assert a[1, 0] < np.nanmean(values[:, 1]) < a[1, 1]
    assert np.isnan(bootstrap_ci(np.full(5, np.nan), n_boot=10)).all()
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(values, level=1.5)
