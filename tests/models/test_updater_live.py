"""Live-update training: the window split, seeded determinism, and the planted-drift test
(a trained updater moves drifting users to their new topic; the stale base does not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.base import InteractionGraph
from models.incremental_updater import IncrementalUpdater
from models.live_update import (
    LiveUpdateHistory,
    fit_base_with,
    split_live_window,
    train_live_update,
)
from models.mf import MFBPR
from models.neighbour_buffer import NeighbourBuffer
from models.updater import TemporalUpdater
from tests.models.updater_data import DriftWorld, drift_world, svd_base, topic_share

FAST = dict(holdout=0.5, num_batches=10, num_neighbours=10, lr=1e-2, patience=5,
            device="cpu", progress=False, time_dim=8, key_dim=16)


# tiny tensors: a second intra-op thread only adds contention on a loaded 2-core box
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained() -> tuple[TemporalUpdater, LiveUpdateHistory]:
    """An updater trained on a *different* world (seed 1) than the one it is tested on,
    from ROLAND's cumulative-average start (``user_history_weight=1``), which follows no
    drift: what the drift tests see was learned. Items are not scaled by their degree growth
    (``item_degree_exponent=0``): this world keeps every item equally popular by design, so
    the growth factors would only be Poisson noise on the users' rankings. Users go through
    the learned attention (``user_aggregation="attention"``), the path ROLAND trains."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    history = LiveUpdateHistory()
    module = train_live_update(drift_world(seed=1).full, svd_base, epochs=30, seed=0,
                               history=history, user_history_weight=1.0,
                               item_degree_exponent=0.0, user_aggregation="attention",
                               **FAST)  # type: ignore[arg-type]
    torch.set_num_threads(threads)
    return module, history


def replay(module: TemporalUpdater, world: DriftWorld) -> IncrementalUpdater:
    """Base fitted on period 1; period 2 streamed through the updater in 10 batches."""
    base_user, base_item = svd_base(world.period1)
    inc = IncrementalUpdater(base_user, base_item, module,
                             NeighbourBuffer.from_graph(world.period1, 10), device="cpu")
    p2 = world.period2
    for part in np.array_split(np.arange(p2.num_edges), 10):
        inc.update(p2.user[part], p2.item[part], p2.ts[part])
    return inc


def test_split_live_window_cuts_the_end_into_time_ordered_batches() -> None:
    g = drift_world(seed=2).full
    history, batches = split_live_window(g, holdout=0.25, num_batches=7)
    assert history.num_edges == round(0.75 * g.num_edges) and len(batches) == 7
    held = np.concatenate(batches)
    assert len(held) + history.num_edges == g.num_edges
    assert history.ts.max() <= g.ts[held].min()
    assert np.all(np.diff(g.ts[held]) >= 0)
    assert max(map(len, batches)) - min(map(len, batches)) <= 1
    with pytest.raises(ValueError, match="holdout"):
        split_live_window(g, holdout=1.0)
    with pytest.raises(ValueError, match="num_batches"):
        split_live_window(g, num_batches=1)


def test_training_improves_validation_and_keeps_the_best(
    trained: tuple[TemporalUpdater, LiveUpdateHistory],
) -> None:
    module, history = trained
    assert np.isfinite(history.loss).all() and len(history.valid) == len(history.loss) + 1
    scores = dict(history.valid)
    assert history.best_epoch is not None and history.best_epoch >= 1
    assert scores[history.best_epoch] == max(scores.values()) > scores[0] + 0.1
    assert not module.training and next(module.parameters()).device.type == "cpu"


def test_keeps_the_initial_weights_when_training_only_hurts() -> None:
    g = drift_world(seed=5).full
    history = LiveUpdateHistory()
    module = train_live_update(g, svd_base, epochs=2, seed=3, history=history,
                               **dict(FAST, lr=50.0))  # type: ignore[arg-type]
    assert history.best_epoch == 0, history
    initial = TemporalUpdater(8, time_dim=8, key_dim=16, seed=3)
    for (k, x), (_, y) in zip(module.state_dict().items(), initial.state_dict().items(),
                              strict=True):
        torch.testing.assert_close(x, y, msg=k)


def test_planted_drift_moves_drifting_users_to_their_new_topic(
    trained: tuple[TemporalUpdater, LiveUpdateHistory],
) -> None:
    world = drift_world(seed=0)
    base_user, base_item = svd_base(world.period1)
    inc = replay(trained[0], world)
    users, items = inc.user_embeddings(), inc.item_embeddings()
    stale = topic_share(base_user, base_item, world.drifters, world.item_topic, topic=1)
    fresh = topic_share(users, items, world.drifters, world.item_topic, topic=1)
    # (thresholds leave room: over training seeds 0-4 the drifters reach 0.51-0.95)
    assert stale <= 0.2 and fresh >= stale + 0.4, (stale, fresh)
    # the users who drifted the other way move to A; those who kept their taste keep it
    n = len(world.drifters)
    to_a, kept_a, kept_b = np.arange(60 - n, 60), np.arange(n, 30), np.arange(30, 60 - n)
    assert topic_share(base_user, base_item, to_a, world.item_topic, topic=0) <= 0.2
    assert topic_share(users, items, to_a, world.item_topic, topic=0) >= 0.8
    assert topic_share(users, items, kept_a, world.item_topic, topic=0) >= 0.8
    assert topic_share(users, items, kept_b, world.item_topic, topic=1) >= 0.5


def test_trained_updater_embeds_a_new_user_near_its_items(
    trained: tuple[TemporalUpdater, LiveUpdateHistory],
) -> None:
    world = drift_world(seed=0)
    inc = replay(trained[0], world)
    new_user = inc.num_users
    a_items = np.flatnonzero(world.item_topic == 0)[[0, 3, 6, 9]]
    inc.update([new_user] * 4, a_items, 2.5e6 + np.arange(4.0))
    scores = inc.user_embeddings()[new_user] @ inc.item_embeddings().T
    assert topic_share(inc.user_embeddings(), inc.item_embeddings(), np.array([new_user]),
                       world.item_topic, topic=0) >= 0.6
    assert scores[world.item_topic == 0].mean() > scores[world.item_topic == 1].mean()


def test_trained_updater_survives_bytes(trained: tuple[TemporalUpdater, LiveUpdateHistory]) -> None:
    module = trained[0]
    back = TemporalUpdater.from_bytes(module.to_bytes())
    world = drift_world(seed=3)
    a = replay(module, world).user_embeddings()
    b = replay(back, world).user_embeddings()
    torch.testing.assert_close(a, b)


def test_seeded_and_accepts_base_matrices_or_a_fitter() -> None:
    g = drift_world(seed=4, users_per_topic=8, items_per_topic=6, per_user=6).full
    kwargs = dict(FAST, epochs=1, num_batches=4, valid_batches=1)
    history, _ = split_live_window(g, kwargs["holdout"], kwargs["num_batches"])
    a = train_live_update(g, svd_base, seed=7, **kwargs)  # type: ignore[arg-type]
    b = train_live_update(g, svd_base(history), seed=7, **kwargs)  # type: ignore[arg-type]
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, msg=k)
    c = train_live_update(g, svd_base, seed=8, **kwargs)  # type: ignore[arg-type]
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                      c.state_dict().values(), strict=True))
    with pytest.raises(TypeError, match="only apply to a new updater"):
        train_live_update(g, svd_base, TemporalUpdater(8), time_dim=4)
    with pytest.raises(ValueError, match="valid_batches"):
        train_live_update(g, svd_base, num_batches=4, valid_batches=3)


def test_fit_base_with_a_recommender() -> None:
    g = InteractionGraph.from_arrays(np.arange(40) % 8, np.arange(40) % 5,
                                     np.arange(40, dtype=float))
    module = train_live_update(
        g, fit_base_with(MFBPR(embedding_dim=8, epochs=2, progress=False, device="cpu")),
        epochs=1, num_batches=3, valid_batches=0, device="cpu", progress=False, time_dim=8,
    )
    assert module.embedding_dim == 8
