"""Choosing the trend-aware ranker's parameters on a validation window.

The search is staged, each stage keeping the best Recall@K so far: the trend term's
half-lives and blend first (it ranks every user, cold ones included), then the weight of
the co-visitation term, then the weight of the base embeddings, and the two weights once
more while that changes them. Only the validation events
are scored; nothing after them is read.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from models.base import InteractionGraph
from models.trend.scoring import DAY, TrendParams, covis_scores, standardised
from models.trend.state import TrendState

#: the grids searched by default (half-lives in days)
SHORT_HALF_LIVES_DAYS = (0.5, 1.0, 2.0, 3.0)
LONG_HALF_LIVES_DAYS = (7.0, 14.0, 30.0, math.inf)
LONG_WEIGHTS = (0.0, 0.15, 0.3)
# up to weights at which the term decides the ranking and the trend only breaks ties: on
# a MovieLens-1M-like stream (800-day test period) both stopped at the old tops (3.2, 0.2)
# and the ranker trailed its own LightGCN base (0.156 vs 0.165 Recall@20)
COVIS_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8)
EMBEDDING_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8)
#: weights of the content terms (tags, release age) searched when items have content
CONTENT_WEIGHTS = (0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
#: passes over the personal terms' weights (coordinate ascent: a strong embedding term may
#: want another co-visitation weight)
WEIGHT_ROUNDS = 2
#: score-matrix elements per validation step (float64: 160 MB); fewer users at many items
MAX_SCORES = 20_000_000
#: score-matrix elements of a whole validation walk, per term: the walk keeps every step's
#: matrices (co-visitation, embedding, content, a stage's sum), so at 27k items and 30 steps
#: the per-step bound alone would allow ~19 GB; this one holds them to ~5 GB
MAX_WALK_SCORES = 150_000_000
#: most ranking moments of a validation walk: a longer window is walked in wider whole
#: multiples of the horizon. Every candidate of the search re-scores every step, and a
#: MovieLens-1M-like stream's 780-day validation window at one step a day kept
#: ``streamrec evaluate`` in the ranker's fit for over 16 minutes.
MAX_VALIDATION_STEPS = 30


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
        return float(np.mean(self.per_user(scores)))

    def per_user(self, scores: np.ndarray) -> np.ndarray:
        """float64 ``[U]`` Recall@K of every user of :attr:`users`, seen items masked
        (``scores`` is modified)."""
        scores[self.seen_row, self.seen_item] = -np.inf
        k = min(self.k, scores.shape[1] - 1)
        # torch.topk: 30x numpy's argpartition on [2000, 12000] float64 (38 ms vs 1.2 s),
        # which took three quarters of a MovieTweetings-100K fit
        top = torch.topk(torch.from_numpy(scores), k, dim=1).indices.numpy()
        hit = np.zeros(scores.shape, dtype=bool)
        hit[np.arange(len(top))[:, None], top] = True
        hits = np.bincount(self.pos_user, weights=hit[self.pos_user, self.pos_item],
                           minlength=len(self.users))
        return hits / np.minimum(self.n_pos, self.k)


@dataclass
class ValidationStep:
    """One ranking moment of the validation walk: the users scored, the trend term's
    ``log(c_h + smoothing)`` rows per half-life (``inf``: all-time), the co-visitation term
    ``[U, I]``, the base's standardised inner products ``[U, I]`` (or ``None``) and the
    content's tag and release-age terms (float32 ``[U, I]``, or ``None`` without content)."""

    task: ValidationTask
    log_counts: dict[float, np.ndarray]
    covis: np.ndarray
    z: np.ndarray | None
    tags: np.ndarray | None = None
    ages: np.ndarray | None = None


def validation_steps(
    state: TrendState,
    history: InteractionGraph,
    valid: InteractionGraph,
    *,
    half_lives: Sequence[float],
    horizon: float | None = None,
    base_dots: Callable[[np.ndarray], np.ndarray] | None = None,
    k: int = 20,
    max_users: int = 5000,
    seed: int = 0,
    smoothing: float = 0.1,
) -> list[ValidationStep]:
    """Walk ``valid`` as the service would: rank at the start of every ``horizon``
    seconds (``None``: once, at its start) with the state of every earlier event, score
    that step's events, then apply them. ``state`` (built on ``history``) is not modified.
    Each step scores at most ``max_users`` users (drawn with ``seed``), fewer where the
    catalogue would make the score matrix exceed :data:`MAX_SCORES` elements, or all the
    steps' matrices together :data:`MAX_WALK_SCORES` (never fewer than 200)."""
    if valid.num_edges == 0:
        return []
    start, end = float(valid.ts.min()), float(valid.ts.max())
    if horizon is not None and (end - start) / horizon > MAX_VALIDATION_STEPS:
        horizon *= math.ceil((end - start) / horizon / MAX_VALIDATION_STEPS)
    bounds = [start] if horizon is None else list(np.arange(start, end, horizon))
    bounds.append(np.inf)
    state = copy.deepcopy(state)
    n_items = max(history.num_items, valid.num_items)
    # every candidate scores a dense [users, items] matrix per step: bound it (float64)
    n_steps = len(bounds) - 1
    max_users = max(200, min(max_users, MAX_SCORES // max(n_items, 1),
                             MAX_WALK_SCORES // max(n_items * n_steps, 1)))
    steps = []
    for lo, hi in itertools.pairwise(bounds):
        past = history.concat(valid.subset(valid.ts < lo))
        task = ValidationTask(past, valid.subset((valid.ts >= lo) & (valid.ts < hi)), k=k,
                              max_users=max_users, seed=seed)
        if len(task.users):
            t = task.t
            pad = n_items - state.num_items
            decayed = state.decayed(t)
            table = {h: np.log(np.pad(decayed[state.half_lives.index(h)], (0, pad)) + smoothing)
                     for h in half_lives}
            table[math.inf] = np.log(np.pad(state.counts, (0, pad)) + smoothing)
            covis = np.pad(covis_scores(state, TrendParams(0, 0, 0, 0), task.users),
                           ((0, 0), (0, pad)))
            z = None
            if base_dots is not None:
                dots = standardised(base_dots(task.users))
                z = np.pad(dots, ((0, 0), (0, n_items - dots.shape[1])))
            tags = ages = None
            if state.affinity is not None:
                tags, ages = (np.asarray(m, np.float32) for m in state.affinity.item_terms(
                    task.users, np.arange(n_items), t))
            steps.append(ValidationStep(task, table, covis, z, tags, ages))
        new = (valid.ts >= lo) & (valid.ts < hi)
        state.update(valid.user[new], valid.item[new], valid.ts[new])
    return steps


def tune(
    steps: Sequence[ValidationStep],
    *,
    short_half_lives: Sequence[float] = tuple(h * DAY for h in SHORT_HALF_LIVES_DAYS),
    long_half_lives: Sequence[float] = tuple(h * DAY for h in LONG_HALF_LIVES_DAYS),
    long_weights: Sequence[float] = LONG_WEIGHTS,
    covis_weights: Sequence[float] = COVIS_WEIGHTS,
    embedding_weights: Sequence[float] = EMBEDDING_WEIGHTS,
    content_weights: Sequence[float] = CONTENT_WEIGHTS,
) -> tuple[TrendParams, dict[str, float]]:
    """The parameters with the best Recall@K pooled over every (step, user) pair, and the
    validation recall of each stage's winner (``valid_recall_trend``, ``_covis``,
    ``_embedding``, ``_tags``, ``_age``)."""
    if not steps:
        raise ValueError("no validation step has a user with an unseen item")

    def pooled(params: TrendParams) -> float:
        return float(np.concatenate([step.task.per_user(_scores(step, params))
                                     for step in steps]).mean())

    best: tuple[float, TrendParams] | None = None
    for short, long, w in itertools.product(short_half_lives, long_half_lives, long_weights):
        if w == 0 and long != long_half_lives[0]:
            continue  # the long half-life plays no part at weight 0
        candidate = TrendParams(short, long, w, 0.0)
        value = pooled(candidate)
        if best is None or value > best[0]:
            best = (value, candidate)
    assert best is not None
    report = {"valid_recall_trend": best[0]}
    stages = [("covis_weight", covis_weights, "valid_recall_covis")]
    if steps[0].z is not None:
        stages.append(("embedding_weight", embedding_weights, "valid_recall_embedding"))
    if steps[0].tags is not None:
        stages += [("tag_weight", content_weights, "valid_recall_tags"),
                   ("age_weight", content_weights, "valid_recall_age")]
    for _ in range(WEIGHT_ROUNDS):
        before = best[1]
        for field_name, grid, key in stages:
            # the other terms' sum once per stage: a candidate adds only its own term
            rests = [_scores(step, replace(best[1], **{field_name: 0.0})) for step in steps]
            terms = [getattr(step, _TERMS[field_name]) for step in steps]
            for weight in grid:
                candidate = replace(best[1], **{field_name: weight})
                if candidate == best[1]:
                    continue
                value = float(np.concatenate([
                    step.task.per_user(rest + weight * term)
                    for step, rest, term in zip(steps, rests, terms, strict=True)]).mean())
                if value > best[0]:
                    best = (value, candidate)
            report[key] = best[0]
        if best[1] == before:
            break
    return best[1], report



#: the step attribute that each personal weight multiplies
_TERMS = {"covis_weight": "covis", "embedding_weight": "z", "tag_weight": "tags",
          "age_weight": "ages"}


def _scores(step: ValidationStep, params: TrendParams) -> np.ndarray:
    """float64 ``[U, I]``: the score of ``params`` at one validation step (a new array)."""
    trend = (1 - params.long_weight) * step.log_counts[params.short_half_life]
    if params.long_weight:
        trend = trend + params.long_weight * step.log_counts[params.long_half_life]
    scores = np.tile(trend, (len(step.task.users), 1))
    for field_name, attribute in _TERMS.items():
        weight, term = getattr(params, field_name), getattr(step, attribute)
        if weight and term is not None:
            scores += weight * term
    return scores
