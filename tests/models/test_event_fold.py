"""OrderedFold: the state is a function of the event set, whatever the batching and order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.event_fold import OrderedFold
from models.incremental_updater import IncrementalUpdater
from models.neighbour_buffer import NeighbourBuffer
from models.updater import TemporalUpdater

pytestmark = pytest.mark.usefixtures("single_thread")
DIM, USERS, ITEMS = 8, 30, 20


def _maker(num_layers: int = 1):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randn(USERS, DIM, generator=gen), torch.randn(ITEMS, DIM, generator=gen)
    history = NeighbourBuffer(5).extend(np.arange(USERS) % USERS, np.arange(USERS) % ITEMS,
                                        np.arange(USERS, dtype=float))
    module = TemporalUpdater(DIM, time_dim=4, key_dim=8, num_layers=num_layers)

    def make() -> IncrementalUpdater:
        buffer = NeighbourBuffer(5).load_state_dict(history.state_dict())
        return IncrementalUpdater(users, items, module, buffer, device="cpu")

    return make


def _events(n: int, seed: int = 1) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, USERS + 5, n)  # some users and items the base does not know
    item = rng.integers(0, ITEMS + 3, n)
    ts = 100.0 + np.sort(rng.uniform(0, 1000, n))
    return user, item, ts, rng.uniform(0.5, 2.0, n).astype(np.float32)


def _fold(batches: list[np.ndarray], events: tuple[np.ndarray, ...], chunk: int,
          num_layers: int = 1, undo_steps: int = 64) -> OrderedFold:
    fold = OrderedFold(_maker(num_layers), chunk=chunk, undo_steps=undo_steps)
    for rows in batches:
        fold.add(*(a[rows] for a in events))
    return fold


@pytest.mark.parametrize(("num_layers", "undo_steps"), [(1, 64), (2, 64), (1, 1), (1, 0)])
def test_batching_and_arrival_order_do_not_change_the_state(num_layers: int,
                                                            undo_steps: int) -> None:
    events = _events(300)
    one = _fold([np.arange(300)], events, chunk=32, num_layers=num_layers)
    rng = np.random.default_rng(2)
    # two "processes": partitions interleaved in uneven batches, the second one lagging
    odd = np.arange(1, 300, 2)
    lagging = np.split(odd, np.sort(rng.choice(np.arange(1, 150), 9, replace=False)))
    batches = [np.arange(0, 300, 2)[:60], *lagging[:4], np.arange(0, 300, 2)[60:],
               *lagging[4:]]
    many = _fold(batches, events, chunk=32, num_layers=num_layers, undo_steps=undo_steps)
    # odd rows arrive after later even rows were folded: undone or rebuilt from the base
    if undo_steps == 64:
        assert many.rebuilds == 0 < many.rewinds
    elif undo_steps == 1:  # some lag by more than one step
        assert many.rebuilds > 0
    else:
        assert many.rewinds == 0 < many.rebuilds
    assert many.num_events == one.num_events == 300
    _assert_same_state(one, many)


def _assert_same_state(one: OrderedFold, other: OrderedFold) -> None:
    for side in ("user", "item"):
        idx = np.arange(getattr(one.inc, f"num_{side}s"))
        a, ta = one.inc.rows(side, idx)
        b, tb = other.inc.rows(side, idx)
        assert np.abs(a - b).max() < 1e-5 and np.array_equal(ta, tb)


def test_in_order_batches_fold_without_rebuilds_to_the_same_state() -> None:
    events = _events(200)
    fold = _fold(np.array_split(np.arange(200), 7), events, chunk=50)
    assert fold.rebuilds == fold.rewinds == 0 and fold.num_events == 200
    _assert_same_state(_fold([np.arange(200)], events, chunk=50), fold)


def test_changed_nodes_cover_every_node_that_moved() -> None:
    events = _events(120)
    fold = _fold([np.arange(100)], events, chunk=50)
    before = {s: fold.inc.rows(s, np.arange(getattr(fold.inc, f"num_{s}s")))[0]
              for s in ("user", "item")}
    users, items = fold.add(*(a[100:] for a in events))
    for side, changed in (("user", users), ("item", items)):
        n = len(before[side])
        after = fold.inc.rows(side, np.arange(n))[0]
        moved = np.flatnonzero(np.abs(after - before[side]).max(axis=1) > 0)
        assert set(moved.tolist()) <= set(changed.tolist())


def test_chunk_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk"):
        OrderedFold(_maker(), chunk=0)
    with pytest.raises(ValueError, match="undo_steps"):
        OrderedFold(_maker(), undo_steps=-1)


def test_rollback_undoes_an_update_exactly() -> None:
    inc = _maker()()
    user, item, ts, weight = _events(40)
    inc.update(user[:20], item[:20], ts[:20], weight[:20])
    before = inc.state_dict()
    saved = inc.checkpoint(np.unique(user[20:]), np.unique(item[20:]))
    inc.update(user[20:], item[20:], ts[20:], weight[20:])  # new nodes among them
    inc.rollback(saved)
    after = inc.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        if key == "buffer":
            for name, array in value.items():  # type: ignore[union-attr]
                assert np.array_equal(array, after[key][name]), name  # type: ignore[index]
        elif isinstance(value, list):
            assert all(torch.equal(a, b) for a, b in zip(value, after[key], strict=True)), key
        elif isinstance(value, np.ndarray):
            assert np.array_equal(value, after[key]), key  # type: ignore[arg-type]
    # and the rolled-back updater continues exactly as one that never saw those events
    fresh = _maker()()
    fresh.update(user[:20], item[:20], ts[:20], weight[:20])
    for inc_ in (inc, fresh):
        inc_.update(user[20:], item[20:], ts[20:], weight[20:])
    assert torch.equal(inc.user_embeddings(), fresh.user_embeddings())
    assert torch.equal(inc.item_embeddings(), fresh.item_embeddings())


def test_fast_batches_settle_to_the_canonical_state() -> None:
    events = _events(300)
    one = _fold([np.arange(300)], events, chunk=32)
    fold = OrderedFold(_maker(), chunk=32)
    order = np.concatenate([np.arange(0, 300, 2), np.arange(1, 300, 2)])  # out of order
    for k, rows in enumerate(np.array_split(order, 10)):
        users, items = fold.add(*(a[rows] for a in events), settle=k % 4 == 3)
        assert set(events[0][rows]) <= set(users.tolist())
    assert fold.unsettled > 0 and fold.num_events == 300
    fold.add([], [], [])  # settles
    assert fold.unsettled == 0 and fold.num_events == 300
    _assert_same_state(one, fold)
