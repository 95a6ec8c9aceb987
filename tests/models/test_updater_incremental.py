"""IncrementalUpdater: only affected nodes move, new nodes, the time-order rule, state and
devices, and fail-fast checks."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from models.incremental_updater import IncrementalUpdater
from models.neighbour_buffer import NeighbourBuffer
from models.state_update import STATE_UPDATES
from models.updater import TemporalUpdater
from tests.models.updater_data import drift_world, svd_base, topic_share

DIM = 8


# tiny tensors: a second intra-op thread only adds contention on a loaded 2-core box
pytestmark = pytest.mark.usefixtures("single_thread")


def module(seed: int = 0, **kwargs: object) -> TemporalUpdater:
    return TemporalUpdater(DIM, time_dim=4, key_dim=8, seed=seed, **kwargs)  # type: ignore[arg-type]


def world_updater(**kwargs: object) -> tuple[IncrementalUpdater, object]:
    w = drift_world(seed=0)
    base_user, base_item = svd_base(w.period1, DIM)
    inc = IncrementalUpdater(base_user, base_item, module(**kwargs),
                             NeighbourBuffer.from_graph(w.period1, 10), device="cpu")
    return inc, w


@pytest.mark.parametrize("update", STATE_UPDATES)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_updates_touch_only_the_affected_nodes(update: str, num_layers: int) -> None:
    inc, w = world_updater(update=update, num_layers=num_layers)
    users0, items0 = inc.user_embeddings(), inc.item_embeddings()
    res = inc.update([3, 3, 41], [5, 30, 30], [2.1e6, 2.2e6, 2.3e6], [1.0, 2.0, 1.0])
    assert res.user_idx.tolist() == [3, 41] and res.item_idx.tolist() == [5, 30]
    assert res.user_vectors.dtype == np.float32 and res.user_vectors.shape == (2, DIM)
    assert res.user_updated_at.tolist() == [2.2e6, 2.3e6]
    assert res.item_updated_at.tolist() == [2.1e6, 2.3e6] and res.updated_at == 2.3e6
    users1, items1 = inc.user_embeddings(), inc.item_embeddings()
    np.testing.assert_array_equal(users1[res.user_idx].numpy(), res.user_vectors)
    np.testing.assert_array_equal(items1[res.item_idx].numpy(), res.item_vectors)
    untouched_u = np.setdiff1d(np.arange(inc.num_users), res.user_idx)
    untouched_i = np.setdiff1d(np.arange(inc.num_items), res.item_idx)
    torch.testing.assert_close(users1[untouched_u], users0[untouched_u], rtol=0, atol=0)
    torch.testing.assert_close(items1[untouched_i], items0[untouched_i], rtol=0, atol=0)
    assert not torch.allclose(users1[3], users0[3])
    assert np.isfinite(res.user_vectors).all() and np.isfinite(res.item_vectors).all()


@pytest.mark.parametrize("update", STATE_UPDATES)
def test_new_user_lands_near_the_items_it_touched(update: str) -> None:
    inc, w = world_updater(update=update)
    new_user = inc.num_users + 2  # indices may skip: the gap gets new-node rows too
    a_items = np.flatnonzero(w.item_topic == 0)[:5]
    res = inc.update([new_user] * 5, a_items, 2.5e6 + np.arange(5))
    assert inc.num_users == new_user + 1 and res.user_idx.tolist() == [new_user]
    share_a = topic_share(inc.user_embeddings(), inc.item_embeddings(), np.array([new_user]),
                          w.item_topic, topic=0)
    assert share_a >= 0.9


def test_new_item_with_features_starts_from_its_projection() -> None:
    inc, _ = world_updater(item_feature_dim=3)
    with torch.no_grad():
        inc.updater.item_projection.weight.fill_(0.5)
    new_item = inc.num_items
    inc.add_item_features([new_item], [[1.0, 2.0, 3.0]])
    plain, _ = world_updater(item_feature_dim=3)
    with torch.no_grad():
        plain.updater.item_projection.weight.fill_(0.5)
    a = inc.update([0], [new_item], [2.5e6]).item_vectors
    b = plain.update([0], [new_item], [2.5e6]).item_vectors
    assert not np.allclose(a, b)
    with pytest.raises(ValueError, match="item_feature_dim=0"):
        world_updater()[0].add_item_features([0], [[1.0]])


def test_time_never_runs_backwards() -> None:
    """An event older than the node's last update joins the buffer in time order, and the
    node is recomputed as of its last update time, not the event's (the attention path,
    where time enters the state)."""
    inc, _ = world_updater(user_aggregation="attention")
    inc.update([7], [2], [3.0e6])
    user_before = inc.state_tables("user")[0][7].clone()
    items_before = inc.state_tables("item")[0].clone()
    degree_before = int(inc.buffer.degree("user", [7])[0])
    res = inc.update([7], [25], [2.5e6])  # older than user 7's last update
    assert res.user_updated_at.tolist() == [3.0e6] and res.updated_at == 3.0e6
    assert res.item_updated_at.tolist() == [2.5e6]  # item 25's own clock is earlier
    assert inc.last_update("user", [7]).tolist() == [3.0e6]
    nbr, ts, weight, mask = inc.buffer.recent("user", [7])
    assert np.all(np.diff(ts[mask]) >= 0) and 2.5e6 in ts[mask] and ts[mask][-1] == 3.0e6
    assert inc.updater.attend == "batch"  # the update reads the batch's neighbours:
    batch_mask = mask & (ts >= 2.5e6)  # those from the node's earliest batch event on
    with torch.no_grad():  # the same state, recomputed by hand as of t = 3.0e6
        expected = inc.scale * inc.updater.step(
            0, "user", user_before[None] / inc.scale,
            items_before[torch.from_numpy(nbr)] / inc.scale,
            torch.from_numpy(3.0e6 - ts), torch.from_numpy(weight),
            torch.from_numpy(batch_mask),
            torch.tensor([degree_before]), torch.tensor([1]),
        )
    np.testing.assert_allclose(res.user_vectors[0], expected[0].numpy(), rtol=1e-5, atol=1e-6)


def test_fails_fast_on_dimension_mismatches() -> None:
    with pytest.raises(ValueError, match="trained for d=8"):
        IncrementalUpdater(torch.zeros(3, 4), torch.zeros(3, 4), module(), device="cpu")
    with pytest.raises(ValueError, match="one base version"):
        IncrementalUpdater(torch.zeros(3, 8), torch.zeros(3, 4), module(), device="cpu")
    with pytest.raises(ValueError, match="2-D"):
        IncrementalUpdater(torch.zeros(8), torch.zeros(3, 8), module(), device="cpu")
    with pytest.raises(ValueError, match="NaN"):
        IncrementalUpdater(torch.full((2, 8), float("nan")), torch.zeros(3, 8), module(),
                           device="cpu")
    inc = IncrementalUpdater(torch.zeros(3, 8), torch.zeros(3, 8), module(), device="cpu")
    with pytest.raises(ValueError, match="one length"):
        inc.update([0, 1], [0], [1.0])
    with pytest.raises(ValueError, match=">= 0"):
        inc.update([-1], [0], [1.0])
    empty = inc.update([], [], [])
    assert empty.user_idx.shape == (0,) and empty.user_vectors.shape == (0, DIM)


def test_state_dict_round_trip_resumes_identically() -> None:
    inc, w = world_updater(num_layers=2, update="moving_average")
    p2 = w.period2
    half = p2.num_edges // 2
    inc.update(p2.user[:half], p2.item[:half], p2.ts[:half])
    state = inc.state_dict()
    clone = IncrementalUpdater(torch.zeros(1, DIM), torch.zeros(1, DIM),
                               module(seed=5, num_layers=2, update="moving_average"),
                               NeighbourBuffer(10), device="cpu").load_state_dict(state)
    a = inc.update(p2.user[half:], p2.item[half:], p2.ts[half:])
    b = clone.update(p2.user[half:], p2.item[half:], p2.ts[half:])
    np.testing.assert_array_equal(a.user_vectors, b.user_vectors)
    np.testing.assert_array_equal(a.item_vectors, b.item_vectors)
    with pytest.raises(ValueError, match="layer"):
        IncrementalUpdater(torch.zeros(1, DIM), torch.zeros(1, DIM), module(),
                           device="cpu").load_state_dict(state)


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="CUDA is not available")),
])
def test_device_round_trip(device: str) -> None:
    ref, w = world_updater()
    moved, _ = world_updater()
    moved.to(device)
    assert moved.device.type == device
    p2 = w.period2
    a = ref.update(p2.user[:200], p2.item[:200], p2.ts[:200])
    b = moved.update(p2.user[:200], p2.item[:200], p2.ts[:200])
    assert isinstance(b.user_vectors, np.ndarray)
    np.testing.assert_allclose(a.user_vectors, b.user_vectors, rtol=1e-4, atol=1e-5)
    moved.to("cpu")
    assert all(t.device.type == "cpu" for t in moved.state_tables("user"))
    assert next(moved.updater.parameters()).device.type == "cpu"
    c = ref.update(p2.user[200:300], p2.item[200:300], p2.ts[200:300])
    d = moved.update(p2.user[200:300], p2.item[200:300], p2.ts[200:300])
    np.testing.assert_allclose(c.item_vectors, d.item_vectors, rtol=1e-4, atol=1e-5)


def test_lightgcn_users_follow_the_propagation_rule() -> None:
    """Base users that are exactly ``c`` times their degree-normalised item sums stay so
    (with ``w = 1``) when a user streams new items: the rule is LightGCN's row update."""
    items = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    hist_u, hist_i = np.array([0, 0, 0, 1, 1, 2]), np.array([0, 1, 2, 2, 3, 4])
    buffer = NeighbourBuffer(10)
    buffer.extend(hist_u, hist_i, np.arange(6, dtype=float), np.ones(6, np.float32))

    def lightgcn_row(item_ids: list[int], item_degree: np.ndarray) -> torch.Tensor:
        d_u = len(item_ids)
        return 1.7 * sum(items[j] / np.sqrt(d_u * item_degree[j]) for j in item_ids)

    degree = np.bincount(hist_i, minlength=8)
    users = torch.stack([lightgcn_row([int(j) for j in hist_i[hist_u == u]], degree)
                         for u in range(3)])
    inc = IncrementalUpdater(users, items, TemporalUpdater(4, time_dim=4,
                                                           user_history_weight=1.0),
                             buffer, device="cpu")
    assert inc.updater.user_aggregation == "lightgcn"
    assert inc.user_scale == pytest.approx(1.7, rel=1e-5)
    res = inc.update([0, 0], [5, 6], [10.0, 11.0])  # new items, old ones untouched
    degree[[5, 6]] = 1
    expected = lightgcn_row([0, 1, 2, 5, 6], degree)
    assert res.user_idx.tolist() == [0]
    np.testing.assert_allclose(res.user_vectors[0], expected.numpy(), rtol=1e-5, atol=1e-6)
    # a new user (no base row) is its own degree-normalised item sum, times c
    res = inc.update([3], [7], [12.0])
    np.testing.assert_allclose(res.user_vectors[0], (1.7 * items[7]).numpy(), rtol=1e-5)


def test_new_items_follow_the_propagation_rule_with_their_own_scale() -> None:
    """Items the base does not know (and that have no content features) are LightGCN's row
    over their users, times the ``c`` fitted on the base's items, with no discount on
    their history (``w = 1``)."""
    users = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    hist_u, hist_i = np.array([0, 1, 1, 2, 3, 3]), np.array([0, 0, 1, 1, 2, 0])
    buffer = NeighbourBuffer(10)
    buffer.extend(hist_u, hist_i, np.arange(6, dtype=float), np.ones(6, np.float32))
    user_degree = np.bincount(hist_u, minlength=4).astype(float)

    def item_row(user_ids: list[int], degree: np.ndarray, table: torch.Tensor) -> torch.Tensor:
        d_i = len(user_ids)
        return 0.8 * sum(table[u] / np.sqrt(d_i * degree[u]) for u in user_ids)

    items = torch.stack([item_row([int(u) for u in hist_u[hist_i == i]], user_degree, users)
                         for i in range(3)])
    inc = IncrementalUpdater(users, items, TemporalUpdater(4, time_dim=4), buffer, device="cpu")
    assert inc.updater.new_item_aggregation == "lightgcn"
    assert inc.item_scale == pytest.approx(0.8, rel=1e-5)
    res = inc.update([0, 2], [3, 3], [10.0, 11.0])  # item 3 is new; it reads the users' old states
    user_degree[[0, 2]] += 1
    first = item_row([0, 2], user_degree, users)
    np.testing.assert_allclose(res.item_vectors[res.item_idx == 3][0], first.numpy(),
                               rtol=1e-5, atol=1e-6)
    # a later batch adds to its row at full weight: sqrt(2/3) * h + c * x_3 / sqrt(3 d_3)
    user_degree[3] += 1
    res = inc.update([3], [3], [12.0])
    expected = (np.sqrt(2 / 3) * first
                + 0.8 * users[3] / np.sqrt(3 * user_degree[3]))
    np.testing.assert_allclose(res.item_vectors[0], expected.numpy(), rtol=1e-5, atol=1e-6)
    attention = IncrementalUpdater(users, items, TemporalUpdater(
        4, time_dim=4, new_item_aggregation="attention"), NeighbourBuffer(10), device="cpu")
    other = attention.update([0, 2], [3, 3], [10.0, 11.0])
    assert not np.allclose(other.item_vectors[other.item_idx == 3], first.numpy())


def test_modules_written_before_user_aggregation_keep_attention() -> None:
    module = TemporalUpdater(4, time_dim=4, user_aggregation="attention")
    assert TemporalUpdater.from_bytes(module.to_bytes()).user_aggregation == "attention"
    payload = TemporalUpdater(4, time_dim=4).hyper_parameters()
    assert payload["user_aggregation"] == payload["new_item_aggregation"] == "lightgcn"
    # bytes written before either option existed: users and new items keep the attention
    old = {k: v for k, v in payload.items()
           if k not in ("user_aggregation", "new_item_aggregation")}
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": old,
                "state_dict": TemporalUpdater(4, time_dim=4).state_dict()}, buffer)
    back = TemporalUpdater.from_bytes(buffer.getvalue())
    assert (back.user_aggregation, back.new_item_aggregation) == ("attention", "attention")
    with pytest.raises(ValueError, match="user_aggregation"):
        TemporalUpdater(4, user_aggregation="mean")
    with pytest.raises(ValueError, match="new_item_aggregation"):
        TemporalUpdater(4, new_item_aggregation="mean")
