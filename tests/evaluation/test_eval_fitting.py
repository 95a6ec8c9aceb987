"""The protocol's fits: the trend ranker's base stands in for the same model's own row."""

import numpy as np
import torch

from evaluation.fitting import build_specs, fit_protocol, shared_base
from evaluation.split import temporal_split
from models.base import InteractionGraph

BASE = dict(embedding_dim=8, epochs=4, batch_size=64, progress=False, device="cpu")


def _graph() -> InteractionGraph:
    """Two taste communities over 40 days, so validation has warm users to stop on."""
    rng = np.random.default_rng(0)
    n = 1500
    users = rng.integers(0, 60, n)
    items = (users % 2) * 15 + rng.integers(0, 15, n)
    ts = np.sort(rng.uniform(0, 40 * 86400, n))
    return InteractionGraph.from_arrays(users, items, ts, num_users=60, num_items=30)


def test_the_rankers_base_equals_fitting_the_base_model_alone() -> None:
    split = temporal_split(_graph(), train_frac=0.8, valid_frac=0.1)
    specs = build_specs(["trend", "lightgcn"], None,
                        {"trend": {"base": "lightgcn", "base_kwargs": BASE}, "lightgcn": BASE},
                        seed=3)
    for fit_on, updater in (("train+valid", True), ("train", False)):
        trend = fit_protocol(specs[0], split, fit_on, seed=3, train_updater=updater)
        alone = fit_protocol(specs[1], split, fit_on, seed=3, train_updater=updater)
        reused = shared_base(specs[1], {"trend": trend}, fit_on)
        assert reused is not None and reused.spec is specs[1]
        torch.testing.assert_close(reused.model.user_embeddings(), alone.model.user_embeddings())
        torch.testing.assert_close(reused.model.item_embeddings(), alone.model.item_embeddings())
        assert reused.epochs == alone.epochs
        assert reused.updater_state == alone.updater_state
        assert reused.metrics.keys() >= {"valid_recall@20", "best_epoch"}
        assert reused.metrics["valid_recall@20"] == alone.metrics["valid_recall@20"]


def test_a_base_with_other_arguments_is_fitted_again() -> None:
    split = temporal_split(_graph(), train_frac=0.8, valid_frac=0.1)
    specs = build_specs(["trend", "lightgcn"], None,
                        {"trend": {"base": "lightgcn", "base_kwargs": BASE},
                         "lightgcn": {**BASE, "embedding_dim": 4}}, seed=3)
    trend = fit_protocol(specs[0], split, "train+valid", seed=3, train_updater=False)
    assert shared_base(specs[1], {"trend": trend}, "train+valid") is None
    other_seed = build_specs(["lightgcn"], None, {"lightgcn": BASE}, seed=4)[0]
    assert shared_base(other_seed, {"trend": trend}, "train+valid") is None
