"""The trending baselines every report carries, with their windows chosen on validation.

Three lists (the protocol of ../shared/tools/trending_floor.py): all-time counts; counts
over the last W days, W in :data:`WINDOW_DAYS`; exponentially decayed counts (PopTrack),
half-life in :data:`HALF_LIFE_DAYS`. Each candidate is fitted on train and scored on the
validation period (Recall@K over every validation user, cold ones included); the best W and
half-life are then refitted on the history the models are fitted on. The test period is
never read, so the choice cannot leak it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.base import InteractionGraph, Recommender
from models.cold_start import RecentPopularity

if TYPE_CHECKING:  # protocol imports this module's neighbours; only the type is needed here
    from evaluation.protocol import EvaluationTask

DAY = 86_400.0
#: candidate windows of the recent-popularity baseline, days
WINDOW_DAYS: tuple[float, ...] = (1, 2, 3, 7, 14, 28)
#: candidate half-lives of the decayed-popularity baseline, days
HALF_LIFE_DAYS: tuple[float, ...] = (0.5, 1, 2, 3, 7, 14, 30)
#: weight of the all-time count that orders items the window or the decay leaves equal
TIE_BREAK = 1e-6
#: the baselines' names in metrics.json, by kind
NAMES = {"all": "pop-alltime", "recent": "pop-recent",
         "decayed": "pop-decayed"}


class TrendingPopularity(Recommender):
    """One popularity list for every user: all-time, recent-window or decayed counts.

    Args:
        kind: ``"all"``, ``"recent"`` (events with ``ts > t_end - days``) or ``"decayed"``
            (each event weighs ``2 ** (-(t_end - ts) / days)``), where ``t_end`` is the
            newest event of the fitted graph.
        days: the window or half-life in days; ``None`` for ``"all"``.

    The all-time count times :data:`TIE_BREAK` is added to order the items the window leaves
    equal. Item vectors carry ``num_items - rank`` (exact in float32), so ties in float32
    cannot reorder the float64 counts. Cold users get the same list (:meth:`cold_scores`).

    >>> g = InteractionGraph.from_arrays([0, 1, 2, 0], [0, 0, 1, 2], [0, 1, 9 * DAY, 10 * DAY])
    >>> TrendingPopularity("recent", 2).fit(g).score(torch.tensor([0])).tolist()
    [[1.0, 3.0, 2.0]]
    """

    name = "trending"
    _param_names = ("kind", "days")

    def __init__(self, kind: str = "all", days: float | None = None) -> None:
        if kind not in NAMES:
            raise ValueError(f"kind must be one of {sorted(NAMES)}, got {kind!r}")
        if (kind == "all") != (days is None) or (days is not None and not days > 0):
            raise ValueError(f"kind {kind!r} needs days {'None' if kind == 'all' else '> 0'}, "
                             f"got {days!r}")
        self.kind, self.days = kind, days
        self._rank_scores: torch.Tensor | None = None
        self._num_users = 0

    def fit(self, graph: InteractionGraph, valid: InteractionGraph | None = None
            ) -> TrendingPopularity:
        """Count ``graph``'s events per item; ``valid`` is ignored."""
        n = graph.num_items
        all_time = np.bincount(graph.item, minlength=n).astype(np.float64)
        if self.kind == "all" or not graph.num_edges:
            counts = all_time
        elif self.kind == "recent":  # the window rule of the service's cold-start fallback
            window = RecentPopularity(self.days * DAY).counts(graph.item, graph.ts, n)
            counts = window.astype(np.float64) + TIE_BREAK * all_time
        else:
            age = float(graph.ts.max()) - graph.ts
            counts = (np.bincount(graph.item, weights=np.exp2(-age / (self.days * DAY)),
                                  minlength=n) + TIE_BREAK * all_time)
        rank = np.empty(n, np.int64)
        rank[np.lexsort((np.arange(n), -counts))] = np.arange(n)
        self._rank_scores = torch.from_numpy((n - rank).astype(np.float32))
        self._num_users = graph.num_users
        return self

    def _scores(self) -> torch.Tensor:
        if self._rank_scores is None:
            raise RuntimeError("TrendingPopularity is not fitted; call fit(graph) first")
        return self._rank_scores

    def user_embeddings(self) -> torch.Tensor:
        self._scores()
        return torch.ones(self._num_users, 1)

    def item_embeddings(self) -> torch.Tensor:
        return self._scores().view(-1, 1)

    def cold_scores(self, history: InteractionGraph) -> torch.Tensor:
        """The same list: a popularity baseline ranks every user alike."""
        return self._scores()

    def hyper_parameters(self) -> dict[str, object]:
        return {"kind": self.kind, "days": self.days}

    def __repr__(self) -> str:
        return f"TrendingPopularity(kind={self.kind!r}, days={self.days})"


def list_recall(scores: np.ndarray, task: EvaluationTask, k: int) -> float:
    """Mean Recall@``k`` (``|P ∩ R| / min(|P|, k)``) of one ranking shared by every user.

    Equal to :func:`evaluation.protocol.evaluate_model` of a model that scores every user
    with ``scores`` (distinct values), without a score matrix: a positive is a hit when its
    rank in the list, minus the user's masked items ranked above it, is below ``k``.

    Args:
        scores: float ``[num_items]`` distinct scores; higher ranks first.
        task: the evaluated users, their positives and masks.
        k: the cut-off.
    """
    n = len(scores)
    position = np.empty(n, np.int64)
    position[np.lexsort((np.arange(n), -np.asarray(scores, np.float64)))] = np.arange(n)
    rows, seen = task.seen.coo(task.users)
    masked = np.sort(rows * n + position[seen])
    counts = np.diff(task.pos_indptr)
    pos_rows = np.repeat(np.arange(len(task.users)), counts)
    key = pos_rows * n + position[task.pos_items]
    above = np.searchsorted(masked, key) - np.searchsorted(masked, pos_rows * n)
    hits = np.bincount(pos_rows, weights=(position[task.pos_items] - above) < k,
                       minlength=len(task.users))
    return float(np.mean(hits / np.minimum(counts, k)))


@dataclass(frozen=True)
class TunedBaseline:
    """A baseline's chosen parameter and every candidate's validation score."""

    name: str
    kind: str
    days: float | None
    valid_scores: dict[str, float]

    def make(self) -> TrendingPopularity:
        """A new, unfitted baseline with the chosen parameter."""
        return TrendingPopularity(self.kind, self.days)

    def info(self, metric: str) -> dict[str, object]:
        """model_info fields: ``baseline``, the chosen window or half-life, the scores."""
        key = {"all": None, "recent": "window_days", "decayed": "half_life_days"}[self.kind]
        out: dict[str, object] = {"baseline": True, "kind": self.kind,
                                  "chosen_on": "validation", "valid_metric": metric,
                                  "valid_scores": dict(self.valid_scores)}
        if key is not None:
            out[key] = self.days
        return out


def tune_baselines(
    train: InteractionGraph,
    valid: InteractionGraph,
    *,
    k: int = 20,
    window_days: Sequence[float] = WINDOW_DAYS,
    half_life_days: Sequence[float] = HALF_LIFE_DAYS,
) -> list[TunedBaseline]:
    """Choose W and the half-life by validation Recall@``k`` (first of equal scores wins).

    Args:
        train: the events the candidates are fitted on.
        valid: the later events they are scored on (positives: a user's items not in train).
        k: the cut-off of the validation recall. (default: ``20``)
        window_days, half_life_days: the candidate grids. (default: the floor's grids)

    Returns:
        The all-time, recent and decayed baselines, in that order.
    """
    from evaluation.protocol import EvaluationTask

    task = EvaluationTask.from_periods(train, valid, fit_on="train")
    out = [TunedBaseline(NAMES["all"], "all", None, {})]
    for kind, grid in (("recent", window_days), ("decayed", half_life_days)):
        scores: dict[str, float] = {}
        for days in grid:
            model = TrendingPopularity(kind, float(days)).fit(train)
            scores[f"{days:g}"] = list_recall(model.item_embeddings()[:, 0].numpy(), task, k)
        best = max(scores, key=lambda key: (scores[key], -list(scores).index(key)))
        out.append(TunedBaseline(NAMES[kind], kind, float(best), scores))
    return out
