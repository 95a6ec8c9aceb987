"""Tiny inline worlds for the incremental-updater tests: two topics, a period in which
every user keeps a taste, and a later period in which some users switch (planted drift)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.base import InteractionGraph

PERIOD = 1_000_000.0  # seconds per period


@dataclass(frozen=True)
class DriftWorld:
    """Users ``[0, half)`` prefer topic A, ``[half, 2 * half)`` topic B in period 1. In period
    2 the ``drifters`` (the first ones of the A group) switch to B and as many of the B group
    (the last ones) switch to A, so neither topic gains popularity overall; the rest keep
    their taste."""

    period1: InteractionGraph
    period2: InteractionGraph
    item_topic: np.ndarray
    drifters: np.ndarray

    @property
    def full(self) -> InteractionGraph:
        p1, p2 = self.period1, self.period2
        return InteractionGraph.from_arrays(
            np.concatenate([p1.user, p2.user]), np.concatenate([p1.item, p2.item]),
            np.concatenate([p1.ts, p2.ts]), num_users=p1.num_users, num_items=p1.num_items,
        )


def drift_world(
    seed: int = 0, users_per_topic: int = 30, items_per_topic: int = 40, per_user: int = 12,
    num_drifters: int = 15, purity: float = 0.95,
) -> DriftWorld:
    rng = np.random.default_rng(seed)
    num_users, num_items = 2 * users_per_topic, 2 * items_per_topic
    item_topic = np.repeat([0, 1], items_per_topic)
    taste1 = np.repeat([0, 1], users_per_topic)
    taste2 = taste1.copy()
    taste2[:num_drifters] = 1
    taste2[num_users - num_drifters:] = 0
    graphs = []
    for period, taste in enumerate((taste1, taste2)):
        user = np.repeat(np.arange(num_users), per_user)
        topic = np.where(rng.random(len(user)) < purity, taste[user], 1 - taste[user])
        item = topic * items_per_topic + rng.integers(items_per_topic, size=len(user))
        ts = period * PERIOD + rng.uniform(0, PERIOD, len(user))
        order = np.argsort(ts)
        graphs.append(InteractionGraph.from_arrays(
            user[order], item[order], ts[order], num_users=num_users, num_items=num_items))
    return DriftWorld(graphs[0], graphs[1], item_topic, np.arange(num_drifters))


def svd_base(graph: InteractionGraph, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form base embeddings: the rank-``dim`` SVD of the interaction-count matrix,
    ``U sqrt(S)`` and ``V sqrt(S)`` (deterministic up to signs, instant)."""
    counts = np.zeros((graph.num_users, graph.num_items))
    np.add.at(counts, (graph.user, graph.item), graph.weight)
    u, s, vt = np.linalg.svd(counts, full_matrices=False)
    root = np.sqrt(s[:dim])
    return (torch.from_numpy(u[:, :dim] * root).float(),
            torch.from_numpy(vt[:dim].T * root).float())


def topic_share(user_emb: torch.Tensor, item_emb: torch.Tensor, users: np.ndarray,
                item_topic: np.ndarray, topic: int, k: int = 10) -> float:
    """Mean share of ``topic`` items in the top-``k`` of ``users`` (no masking)."""
    top = torch.topk(user_emb[torch.from_numpy(users)] @ item_emb.T, k, dim=1).indices
    return float((item_topic[top.numpy()] == topic).mean())
