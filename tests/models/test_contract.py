"""The contract every recommender passes: shapes, finite scores, seeded determinism, valid
top-K lists, and (for the personalised models) the planted community structure."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from models import MODELS, Recommender, make_model, model_arguments
from models.base import InteractionGraph
from tests.models.conftest import Planted

FAST: dict[str, dict[str, object]] = {
    "popularity": {},
    "mf": dict(embedding_dim=16, epochs=30, batch_size=64, lr=0.01, progress=False,
               device="cpu"),
    "lightgcn": dict(embedding_dim=16, epochs=30, batch_size=64, lr=0.01, progress=False,
                     device="cpu"),
    "pinsage": dict(embedding_dim=16, epochs=4, batch_size=64, lr=0.01, num_negatives=32,
                    progress=False, device="cpu"),
    "trend": {"base": None},
}
#: models whose fit draws random numbers (the trend ranker without a base is a count model)
SEEDED = [name for name in FAST if name not in ("popularity", "trend")]


def build(name: str, seed: int = 0) -> Recommender:
    kwargs = dict(FAST[name])
    if name in SEEDED + ["trend"]:
        kwargs["seed"] = seed
    return make_model(name, **kwargs)


_CACHE: dict[tuple[str, int], Recommender] = {}


@pytest.fixture
def fitted(planted: Planted) -> Callable[[str, int], Recommender]:
    def get(name: str, seed: int = 0) -> Recommender:
        if (name, seed) not in _CACHE:
            _CACHE[name, seed] = build(name, seed).fit(planted.train, planted.valid)
        return _CACHE[name, seed]
    return get


def test_factory_covers_every_model() -> None:
    assert set(FAST) == set(MODELS)


@pytest.mark.parametrize("name", list(FAST))
def test_embeddings_have_the_contract_shapes(name: str, planted: Planted, fitted) -> None:
    model = fitted(name)
    users, items = model.user_embeddings(), model.item_embeddings()
    g = planted.train
    assert users.shape[0] == g.num_users and items.shape[0] == g.num_items
    assert users.shape[1] == items.shape[1] >= 1
    for t in (users, items):
        assert t.dtype == torch.float32 and t.device.type == "cpu"
        assert torch.isfinite(t).all()
    scores = model.score(torch.tensor([0, 5, 59]))
    assert scores.shape == (3, g.num_items) and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", list(FAST))
def test_recommend_returns_k_distinct_unseen_items(name: str, planted: Planted, fitted) -> None:
    model, g, k = fitted(name), planted.train, 10
    users = torch.arange(g.num_users)
    items, scores = model.recommend(users, k=k, exclude=g)
    assert items.shape == scores.shape == (g.num_users, k)
    assert ((items >= 0) & (items < g.num_items)).all()
    assert all(len(set(row.tolist())) == k for row in items)
    seen = set(zip(g.user.tolist(), g.item.tolist(), strict=True))
    assert not any((u, i) in seen for u in range(g.num_users) for i in items[u].tolist())
    assert torch.isfinite(scores).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()


@pytest.mark.parametrize("name", SEEDED)
def test_deterministic_given_seed(name: str, planted: Planted, fitted) -> None:
    first = fitted(name)
    again = build(name, seed=0).fit(planted.train, planted.valid)
    assert torch.equal(first.user_embeddings(), again.user_embeddings())
    assert torch.equal(first.item_embeddings(), again.item_embeddings())
    other = fitted(name, seed=1)
    assert not torch.equal(first.item_embeddings(), other.item_embeddings())


def community_auc(model: Recommender, planted: Planted) -> float:
    """Mean over users of P(score of an unseen own-community item > an other-community one)."""
    scores = model.score(torch.arange(planted.train.num_users)).numpy()
    seen = np.zeros_like(scores, dtype=bool)
    seen[planted.train.user, planted.train.item] = True
    aucs = []
    for u, row in enumerate(scores):
        own = row[(planted.item_community == planted.user_community[u]) & ~seen[u]]
        other = row[planted.item_community != planted.user_community[u]]
        aucs.append((own[:, None] > other[None, :]).mean())
    return float(np.mean(aucs))


@pytest.mark.parametrize("name", SEEDED)
def test_ranks_own_community_first(name: str, planted: Planted, fitted) -> None:
    assert community_auc(fitted(name), planted) > 0.95


@pytest.mark.parametrize("name", SEEDED)
def test_training_history_and_early_stopping(name: str, fitted) -> None:
    history = fitted(name).history_
    assert history.loss and all(np.isfinite(history.loss))
    assert history.valid and history.best_epoch is not None
    assert history.best_metric == max(m for _, m in history.valid)


@pytest.mark.parametrize("name", list(FAST))
def test_unfitted_model_fails_clearly(name: str) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        build(name).user_embeddings()


@pytest.mark.parametrize("name", list(FAST))
def test_hyper_parameters_echo_the_constructor(name: str) -> None:
    params = build(name).hyper_parameters()
    for key, value in FAST[name].items():
        assert params[key] == value


@pytest.mark.parametrize("name", list(FAST))
def test_model_arguments_list_the_constructor_keywords(name: str) -> None:
    assert set(build(name).hyper_parameters()) == set(model_arguments(name))
    defaults = build(name).hyper_parameters()
    kwargs = {k: v for k, v in defaults.items() if k not in ("item_features", "content")}
    assert make_model(name, **kwargs).hyper_parameters() == defaults


def test_make_model_rejects_unknown_names_and_arguments() -> None:
    with pytest.raises(ValueError, match="unknown model 'gcn'.*lightgcn"):
        make_model("gcn")
    with pytest.raises(TypeError, match="bad arguments for model 'mf'"):
        make_model("mf", num_hops=3)
    with pytest.raises(ValueError, match="negative_sampler"):
        make_model("lightgcn", negative_sampler="hardest")


def test_popularity_ranks_by_count_and_window() -> None:
    g = InteractionGraph.from_arrays(
        [0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 2], [0, 1, 2, 3, 100, 101], num_items=4
    )
    all_time = make_model("popularity").fit(g)
    assert all_time.score(torch.tensor([1]))[0].argsort(descending=True)[:3].tolist() == [0, 1, 2]
    recent = make_model("popularity", window_seconds=10.0).fit(g)
    assert recent.counts_.tolist() == [0, 1, 1, 0]
    items, _ = recent.recommend(torch.tensor([2]), k=1, exclude=g)
    assert items.tolist() == [[1]]
