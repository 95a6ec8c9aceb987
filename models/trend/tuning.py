"""Choosing the trend-aware ranker's parameters on a validation window.

The search is staged, each stage keeping the best Recall@K so far: the trend term's
half-lives and blend first (it ranks every user, cold ones included), then the weight of
the co-visitation term, then the weight of the base embeddings. Only the validation events
are scored; nothing after them is read.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from models.base import InteractionGraph
from models.trend.scoring import (
    DAY,
    TrendParams,
    covis_scores,
    standardised,
    trend_scores,
)
from models.trend.state import TrendState

#: the grids searched by default (half-lives in days)
SHORT_HALF_LIVES_DAYS = (0.5, 1.0, 2.0, 3.0)
LONG_HALF_LIVES_DAYS = (7.0, 14.0, 30.0, math.inf)
LONG_WEIGHTS = (0.0, 0.15, 0.3)
COVIS_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.4)
EMBEDDING_WEIGHTS = (0.0, 0.05, 0.1, 0.2)


class ValidationTask:
    """Validation users, their positives and masks, scored at Recall@K.

    Args:
        history: the events the state was built from (masked for every user).
        valid: the later events; a user's positives are their items not in ``history``.
        k: the cut-off. (default: ``20``)
        max_users: at most this many users, drawn with ``seed``. (default: ``5000``)
        seed: seed of that draw. (default: ``0``)
    """

    def __init__(self, history: InteractionGraph, valid: InteractionGraph, *, k: int = 20,
                 max_users: int = 5000, seed: int = 0) -> None:
        n_items = max(history.num_items, valid.num_items)
        seen_keys = np.unique(history.user * n_items + history.item)
        keys = np.unique(valid.user * n_items + valid.item)
        keys = keys[~np.isin(keys, seen_keys)]
        users = np.unique(keys // n_items)
        if len(users) > max_users:
            users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
            keys = keys[np.isin(keys // n_items, users)]
        self.users, self.k, self.num_items = users, k, n_items
        self.pos_user = np.searchsorted(users, keys // n_items)
        self.pos_item = keys % n_items
        self.n_pos = np.bincount(self.pos_user, minlength=len(users))
        in_hist = np.isin(history.user, users)
        self.seen_row = np.searchsorted(users, history.user[in_hist])
        self.seen_item = history.item[in_hist]
        self.t = float(history.ts.max()) if history.num_edges else 0.0

    def recall(self, scores: np.ndarray) -> float:
        """Mean Recall@K = |P ∩ top-K| / min(|P|, K) of ``scores`` ``[U, I]`` (modified)."""
        scores[self.seen_row, self.seen_item] = -np.inf
        k = min(self.k, scores.shape[1] - 1)
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        hit = np.zeros(scores.shape, dtype=bool)
        hit[np.arange(len(top))[:, None], top] = True
        hits = np.bincount(self.pos_user, weights=hit[self.pos_user, self.pos_item],
                           minlength=len(self.users))
        return float(np.mean(hits / np.minimum(self.n_pos, self.k)))


def tune(
    state: TrendState,
    task: ValidationTask,
    *,
    base_dots: Callable[[np.ndarray], np.ndarray] | None = None,
    short_half_lives: Sequence[float] = tuple(h * DAY for h in SHORT_HALF_LIVES_DAYS),
    long_half_lives: Sequence[float] = tuple(h * DAY for h in LONG_HALF_LIVES_DAYS),
    long_weights: Sequence[float] = LONG_WEIGHTS,
    covis_weights: Sequence[float] = COVIS_WEIGHTS,
    embedding_weights: Sequence[float] = EMBEDDING_WEIGHTS,
) -> tuple[TrendParams, dict[str, float]]:
    """The best parameters on ``task`` and the validation recall of each stage's winner.

    ``state`` must keep every finite half-life of both grids; ``base_dots(users)`` gives
    the base embeddings' ``[U, I]`` inner products (``None``: no embedding term).
    """
    users = task.users
    pad = task.num_items - state.num_items
    if pad < 0:
        raise ValueError("the validation task has fewer items than the state")

    def widen(x: np.ndarray) -> np.ndarray:
        return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], constant_values=-np.inf)

    best: tuple[float, TrendParams] | None = None
    for short, long, w in itertools.product(short_half_lives, long_half_lives, long_weights):
        if w == 0 and long != long_half_lives[0]:
            continue  # the long half-life plays no part at weight 0
        params = TrendParams(short, long, w, 0.0)
        trend = widen(trend_scores(state, params, task.t))
        value = task.recall(np.tile(trend, (len(users), 1)))
        if best is None or value > best[0]:
            best = (value, params)
    assert best is not None
    report = {"valid_recall_trend": best[0]}
    trend = widen(trend_scores(state, best[1], task.t))
    covis = widen(covis_scores(state, best[1], users))
    covis[np.isinf(covis)] = 0.0
    for beta in covis_weights:
        value = task.recall(trend + beta * covis)
        if value > best[0]:
            best = (value, replace(best[1], covis_weight=beta))
    report["valid_recall_covis"] = best[0]
    if base_dots is not None:
        z = widen(standardised(base_dots(users)))
        z[np.isinf(z)] = 0.0
        mixed = trend + best[1].covis_weight * covis
        for eta in embedding_weights:
            value = task.recall(mixed + eta * z)
            if value > best[0]:
                best = (value, replace(best[1], embedding_weight=eta))
        report["valid_recall_embedding"] = best[0]
    return best[1], report
