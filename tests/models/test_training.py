"""The shared BPR loop's pieces: recall@K, early stopping, configuration checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.base import InteractionGraph
from models.mf import MFBPR
from models.training import EarlyStopping, TrainConfig, recall_at_k, recency_weights
from tests.models.conftest import Planted


def brute_force_recall(user_emb, item_emb, train, test, k):
    seen = set(zip(train.user.tolist(), train.item.tolist(), strict=True))
    warm = set(train.user.tolist())
    scores = (user_emb @ item_emb.T).numpy()
    recalls = []
    for u in sorted(set(test.user.tolist()) & warm):
        pos = {i for uu, i in zip(test.user.tolist(), test.item.tolist(), strict=True)
               if uu == u and (u, i) not in seen}
        if not pos:
            continue
        row = scores[u].copy()
        row[[i for (uu, i) in seen if uu == u]] = -np.inf
        top = set(np.argsort(-row, kind="stable")[:k].tolist())
        recalls.append(len(pos & top) / min(len(pos), k))
    return float(np.mean(recalls))


@pytest.mark.parametrize("k", [1, 3, 20])
@pytest.mark.parametrize("seed", [0, 1])
def test_recall_matches_brute_force(k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    train = InteractionGraph.from_arrays(rng.integers(0, 9, 40), rng.integers(0, 12, 40),
                                         num_users=10, num_items=12)
    test = InteractionGraph.from_arrays(rng.integers(0, 10, 30), rng.integers(0, 12, 30),
                                        num_users=10, num_items=12)
    ue = torch.randn(10, 4, generator=torch.Generator().manual_seed(seed))
    ie = torch.randn(12, 4, generator=torch.Generator().manual_seed(seed + 1))
    got = recall_at_k(ue, ie, train, test, k=k, batch_size=3)
    assert got == pytest.approx(brute_force_recall(ue, ie, train, test, k))


def test_recall_needs_a_warm_user_with_an_unseen_positive() -> None:
    train = InteractionGraph.from_arrays([0], [1], num_users=2, num_items=3)
    test = InteractionGraph.from_arrays([0, 1], [1, 2], num_users=2, num_items=3)
    with pytest.raises(ValueError, match="no warm test user"):
        recall_at_k(torch.ones(2, 1), torch.ones(3, 1), train, test)


def test_early_stopping_restores_the_best_weights() -> None:
    m = nn.Linear(1, 1, bias=False)
    stop = EarlyStopping(patience=2)
    for epoch, (metric, value) in enumerate([(0.1, 1.0), (0.3, 2.0), (0.2, 3.0), (0.25, 4.0)], 1):
        nn.init.constant_(m.weight, value)
        stopped = stop.step(metric, m, epoch)
    assert stopped and stop.best_epoch == 2
    stop.restore(m)
    assert m.weight.item() == 2.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"epochs": 0}, "epochs"), ({"lr": 0.0}, "lr"), ({"batch_size": 0}, "batch_size"),
     ({"negative_sampler": "nope"}, "negative_sampler"),
     ({"max_steps_per_epoch": 0}, "max_steps_per_epoch")],
)
def test_bad_settings_fail_fast(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)
    with pytest.raises(ValueError, match=match):
        MFBPR(**kwargs)


def test_early_stopping_stops_training(planted: Planted) -> None:
    model = MFBPR(embedding_dim=8, epochs=50, batch_size=64, lr=0.05, patience=2,
                  progress=False).fit(planted.train, planted.valid)
    h = model.history_
    assert h.stopped_early and len(h.loss) < 50
    assert len(h.valid) == len(h.loss) and h.best_epoch == len(h.loss) - 2
    users, items = model.user_embeddings(), model.item_embeddings()
    assert recall_at_k(users, items, planted.train, planted.valid) == pytest.approx(h.best_metric)


@pytest.mark.parametrize("max_steps", [None, 3])
def test_an_epoch_takes_at_most_max_steps_larger_steps(planted: Planted,
                                                       max_steps: int | None) -> None:
    model = MFBPR(embedding_dim=4, epochs=2, batch_size=16, lr=0.01, progress=False,
                  max_steps_per_epoch=max_steps)
    batches: list[int] = []
    lrs: list[float] = []
    original = model.build_module

    def build(*args, **kwargs):  # type: ignore[no-untyped-def]
        module = original(*args, **kwargs)
        inner = module.batch

        def batch(users, items):  # type: ignore[no-untyped-def]
            batches.append(len(users))
            return inner(users, items)

        module.batch = batch
        return module

    model.build_module = build  # type: ignore[method-assign]
    real_adam = torch.optim.Adam

    def adam(params, lr, **kwargs):  # type: ignore[no-untyped-def]
        lrs.append(lr)
        return real_adam(params, lr=lr, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim, "Adam", adam)
        model.fit(planted.train)
    edges = len(set(zip(planted.train.user.tolist(), planted.train.item.tolist(),
                        strict=True)))
    size = 16 if max_steps is None else -(-edges // max_steps)
    assert edges > 3 * 16 and sum(batches) == 2 * edges
    assert max(batches) == size and len(batches) == 2 * -(-edges // size)
    assert lrs == [pytest.approx(0.01 * size / 16)]  # the linear scaling rule


def test_valid_must_share_the_index_space(planted: Planted) -> None:
    bad = InteractionGraph.from_arrays([0], [0], num_users=60, num_items=3)
    with pytest.raises(ValueError, match="item index space"):
        MFBPR(epochs=1, progress=False).fit(planted.train, bad)


def test_progress_bar_shows_loss_and_metric(planted: Planted, capsys) -> None:
    MFBPR(embedding_dim=4, epochs=2, batch_size=256, progress=True).fit(planted.train,
                                                                        planted.valid)
    err = capsys.readouterr().err
    assert "loss=" in err and "recall@20=" in err


def test_recency_weights_halve_per_half_life_of_each_edges_latest_event() -> None:
    g = InteractionGraph.from_arrays([1, 0, 1, 0, 1], [2, 0, 2, 1, 0],
                                     [0.0, 30.0, 40.0, 10.0, 10.0], num_items=3)
    # distinct edges by user then item: (0,0)@30, (0,1)@10, (1,0)@10, (1,2)@40 (latest)
    assert recency_weights(g, half_life=10.0).tolist() == pytest.approx(
        [0.5, 0.125, 0.125, 1.0])
    with pytest.raises(ValueError, match="half_life"):
        recency_weights(g, half_life=0.0)
    with pytest.raises(ValueError, match="recency_half_life"):
        MFBPR(recency_half_life_seconds=-1.0)


@pytest.mark.parametrize("half_life", [None, 1.0])
def test_recency_weighted_training_skips_stale_edges(half_life: float | None) -> None:
    # users 0-2 only have edges a year old, users 3-5 edges from the last second: with a
    # one-second half-life the stale edges are (numerically) never drawn, so those users'
    # rows keep their initial values; by default every edge is visited every epoch.
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(6), 5)
    item = rng.integers(0, 10, 30)
    ts = np.where(user < 3, 0.0, 365 * 86400.0)
    g = InteractionGraph.from_arrays(user, item, ts, num_items=10)
    model = MFBPR(embedding_dim=4, epochs=3, batch_size=8, lr=0.05, progress=False,
                  recency_half_life_seconds=half_life).fit(g)
    init = model.build_module(g, torch.Generator().manual_seed(0), torch.device("cpu"))
    unchanged = (model.user_embeddings() == init.user.weight.detach()).all(1).tolist()
    assert unchanged == ([True] * 3 + [False] * 3 if half_life else [False] * 6)
    assert model.hyper_parameters()["recency_half_life_seconds"] == half_life
