"""Tiny inline graphs with planted structure for the model tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from models.base import InteractionGraph


@dataclass(frozen=True)
class Planted:
    """Two user communities with disjoint item sets; ``community`` maps users and items."""

    train: InteractionGraph
    valid: InteractionGraph
    user_community: np.ndarray
    item_community: np.ndarray


def planted_graph(
    users_per_side: int = 30, items_per_side: int = 20, per_user: int = 8, seed: int = 0
) -> Planted:
    """Every user interacts with ``per_user`` random items of their own community; the last
    two events of each user (in time) form the validation graph."""
    rng = np.random.default_rng(seed)
    num_users, num_items = 2 * users_per_side, 2 * items_per_side
    user_comm = np.repeat([0, 1], users_per_side)
    item_comm = np.repeat([0, 1], items_per_side)
    users, items, ts = [], [], []
    for u in range(num_users):
        pool = np.flatnonzero(item_comm == user_comm[u])
        chosen = rng.choice(pool, size=per_user, replace=False)
        users += [u] * per_user
        items += chosen.tolist()
        ts += sorted(rng.uniform(0, 1e6, size=per_user).tolist())
    g = InteractionGraph.from_arrays(users, items, ts, num_users=num_users, num_items=num_items)
    rank = np.tile(np.arange(per_user), num_users)
    is_valid = rank >= per_user - 2
    return Planted(g.subset(~is_valid), g.subset(is_valid), user_comm, item_comm)


@pytest.fixture(scope="session")
def planted() -> Planted:
    return planted_graph()


@pytest.fixture
def single_thread() -> Iterator[None]:
    """torch on one intra-op thread for the test, restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
