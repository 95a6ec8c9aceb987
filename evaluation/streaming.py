"""Streaming evaluation: walk the test period window by window and compare approaches.

Before each window an approach is told the history (every event before the window start)
in :meth:`Approach.prepare`, which is timed; then it scores the users active in the window.
A user's positives are the window's items not already in their history, which is masked.
This measures how stale embeddings decay and what keeping them fresh costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from evaluation.metrics import ranking_metrics
from evaluation.ranking import (
    SeenItems,
    check_scores,
    fallback_,
    mask_,
    popularity,
    top_k,
    unique_pairs,
)
from evaluation.split import iso
from models.base import InteractionGraph, Recommender

DAY = 86_400.0


@runtime_checkable
class Approach(Protocol):
    """A way of keeping recommendations fresh: prepared before every window, then scored."""

    def prepare(self, history: InteractionGraph, window_start: float) -> None:
        """Bring the state up to ``window_start``; ``history`` holds every earlier event."""

    def score(self, users: Tensor) -> Tensor:
        """float ``[len(users), num_items]`` scores; higher is better."""


class FallbackScorer:
    """A fitted model's scores; users absent from its training graph get what ``recommend``
    serves them, ``model.cold_scores(history)`` over every event known so far.

    >>> g = InteractionGraph.from_arrays([0, 0], [1, 1], [0.0, 1.0], num_users=2, num_items=2)
    >>> FallbackScorer(_Const(2, 2), g).score(torch.tensor([0, 1])).tolist()
    [[0.0, 0.0], [0.0, 2.0]]
    """

    def __init__(self, model: Recommender, trained_on: InteractionGraph) -> None:
        self.model = model
        self.known = torch.from_numpy(np.bincount(trained_on.user,
                                                  minlength=trained_on.num_users) > 0)
        self.refresh(trained_on)

    def refresh(self, history: InteractionGraph) -> None:
        """Recount the cold-start ranking on ``history`` (the service recounts it live)."""
        self.cold_scores = self.model.cold_scores(history).detach().to("cpu", torch.float32)

    def score(self, users: Tensor) -> Tensor:
        scores = self.model.score(users).detach().to("cpu", torch.float32).clone()
        inside = users < len(self.known)
        cold = ~inside
        cold[inside] = ~self.known[users[inside]]
        return fallback_(scores, cold, self.cold_scores)


class PopularityApproach:
    """Item interaction counts over all history before the window, refreshed every window.

    >>> a = PopularityApproach()
    >>> a.prepare(InteractionGraph.from_arrays([0, 1, 1], [2, 2, 0], [1.0, 2, 3]), 4.0)
    >>> a.score(torch.tensor([0, 1])).tolist()
    [[1.0, 0.0, 2.0], [1.0, 0.0, 2.0]]
    """

    def __init__(self) -> None:
        self.counts: Tensor | None = None

    def prepare(self, history: InteractionGraph, window_start: float) -> None:
        self.counts = popularity(history)

    def score(self, users: Tensor) -> Tensor:
        if self.counts is None:
            raise RuntimeError("PopularityApproach.score() called before prepare()")
        return self.counts.expand(len(users), -1)


class StaleApproach:
    """A model fitted once and never updated: the stale base.

    Args:
        model: the recommender.
        trained_on: the graph ``model`` was already fitted on. (default: ``None``: fit on
            the history given to the first :meth:`prepare`, which is then timed)

    Users absent from the training graph get the model's cold-start ranking over the
    history known at each window (see :class:`FallbackScorer`).

    >>> a = StaleApproach(_Const(2, 3))
    >>> a.prepare(InteractionGraph.from_arrays([0], [2], [1.0], num_users=2, num_items=3), 2.0)
    >>> a.score(torch.tensor([1])).tolist()
    [[0.0, 0.0, 1.0]]
    """

    def __init__(self, model: Recommender, *, trained_on: InteractionGraph | None = None) -> None:
        self.model = model
        self._scorer = None if trained_on is None else FallbackScorer(model, trained_on)

    def prepare(self, history: InteractionGraph, window_start: float) -> None:
        if self._scorer is None:
            self.model.fit(history)
            self._scorer = FallbackScorer(self.model, history)
        else:
            self._scorer.refresh(history)

    def score(self, users: Tensor) -> Tensor:
        if self._scorer is None:
            raise RuntimeError("StaleApproach.score() called before prepare()")
        return self._scorer.score(users)


class RetrainApproach:
    """A fresh model fitted from scratch on all history before every window.

    Args:
        make: builds a new, unfitted recommender (seed it for reproducible runs).

    >>> a = RetrainApproach(lambda: _Const(1, 2))
    >>> a.prepare(InteractionGraph.from_arrays([0], [1], [1.0]), 2.0)
    >>> a.score(torch.tensor([0])).tolist()
    [[0.0, 0.0]]
    """

    def __init__(self, make: Callable[[], Recommender]) -> None:
        self.make = make
        self._scorer: FallbackScorer | None = None

    def prepare(self, history: InteractionGraph, window_start: float) -> None:
        self._scorer = FallbackScorer(self.make().fit(history), history)

    def score(self, users: Tensor) -> Tensor:
        if self._scorer is None:
            raise RuntimeError("RetrainApproach.score() called before prepare()")
        return self._scorer.score(users)


def plan_windows(start: float, end: float, *, target: int = 30, unit: float = DAY
                 ) -> tuple[float, str]:
    """The default window length over ``[start, end]``: ``unit`` (a day) when at most
    ``target`` of them span the period, else the fewest whole units that keep the number
    of windows at or under ``target``. Returns the length (seconds) and a sentence saying so.

    >>> plan_windows(0.0, 25 * DAY)[0] / DAY, plan_windows(0.0, 800 * DAY)[0] / DAY
    (1.0, 27.0)
    """
    if target < 1:
        raise ValueError(f"target must be >= 1 window, got {target}")
    units = max(1, int(np.ceil((end - start) / unit / target)))
    n = max(1, int(np.ceil((end - start) / (units * unit))))
    return units * unit, (f"{units} day(s) per window so that {n} windows (at most {target}) "
                          "span the test period")


def evaluate_streaming(
    graph: InteractionGraph,
    approaches: Mapping[str, Approach],
    *,
    start: float,
    end: float | None = None,
    window_seconds: float = DAY,
    k: int = 20,
    max_windows: int | None = None,
    batch_size: int = 1024,
    progress: bool = False,
) -> dict[str, object]:
    """Compare ``approaches`` window by window over ``[start, end]``.

    Args:
        graph: the whole stream (train, validation and test events).
        approaches: name -> :class:`Approach`; all see the same windows and users.
        start: first window start, usually the test boundary ``t2`` (epoch seconds).
        end: last event time included. (default: the last event of ``graph``)
        window_seconds: window length. (default: one day)
        k: cut-off of ``recall@k``, ``ndcg@k`` and ``hit@k``. (default: ``20``)
        max_windows: evaluate only the first windows. (default: ``None``, all)
        batch_size: users scored at once. (default: ``1024``)
        progress: show a progress bar over windows. (default: ``False``)

    Returns:
        JSON-ready dict: per window its bounds, sizes and every approach's metrics and
        ``prepare_seconds``/``score_seconds``; a ``summary`` per approach pooled over all
        (window, user) pairs, with total seconds. Windows without users are skipped
        (no prepare, no scores). The last window is closed and may be shorter.

    >>> g = InteractionGraph.from_arrays([0, 1, 0, 1], [0, 0, 1, 1], [0.0, 1.0, 5.0, 12.0])
    >>> out = evaluate_streaming(g, {"pop": PopularityApproach()}, start=2.0,
    ...                          window_seconds=5.0, k=1)
    >>> [(w["n_users"], w["results"]["pop"]["recall@1"]) for w in out["windows"]]
    [(1, 1.0), (1, 1.0)]
    """
    if not approaches:
        raise ValueError("give at least one approach to compare")
    if window_seconds <= 0:
        raise ValueError(f"window_seconds must be positive, got {window_seconds}")
    for name, approach in approaches.items():
        if not isinstance(approach, Approach):
            raise TypeError(f"approach {name!r} lacks prepare(history, window_start)/score(users)")
    end = float(graph.ts.max()) if end is None else float(end)
    if end < start:
        raise ValueError(f"end {iso(end)} lies before start {iso(start)}")
    n_windows = max(1, int(np.ceil((end - start) / window_seconds)))  # last one closed
    total_windows = n_windows
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    windows: list[dict[str, object]] = []
    pooled: dict[str, dict[str, list[Tensor]]] = {name: {} for name in approaches}
    seconds = {name: {"prepare_seconds": 0.0, "score_seconds": 0.0} for name in approaches}
    for w in tqdm(range(n_windows), desc="streaming", disable=not progress, leave=False):
        lo = start + w * window_seconds
        hi = lo + window_seconds
        inside = (graph.ts >= lo) & ((graph.ts < hi) if w < total_windows - 1 else
                                     (graph.ts <= end))
        history = graph.before(lo)
        users, pos, seen = _window_positives(graph.subset(inside), history)
        row: dict[str, object] = {"start": lo, "start_iso": iso(lo), "end": min(hi, end),
                                  "n_events": int(inside.sum()), "n_users": len(users),
                                  "results": {}}
        windows.append(row)
        if not len(users):
            continue
        for name, approach in approaches.items():
            t0 = time.perf_counter()
            approach.prepare(history, lo)
            t1 = time.perf_counter()
            values = _score_window(approach, name, users, pos, seen, graph.num_items, k,
                                   batch_size)
            t2 = time.perf_counter()
            result = {key: float(v.mean()) for key, v in values.items()}
            result.update(prepare_seconds=t1 - t0, score_seconds=t2 - t1)
            row["results"][name] = result  # type: ignore[index]
            seconds[name]["prepare_seconds"] += t1 - t0
            seconds[name]["score_seconds"] += t2 - t1
            for key, v in values.items():
                pooled[name].setdefault(key, []).append(v)
    summary: dict[str, dict[str, float]] = {}
    for name in approaches:
        summary[name] = {key: float(torch.cat(v).mean()) for key, v in pooled[name].items()}
        summary[name].update(seconds[name])
        summary[name]["compute_seconds"] = sum(seconds[name].values())
    return {
        "k": k, "window_seconds": float(window_seconds), "start": float(start),
        "end": end, "start_iso": iso(start), "end_iso": iso(end),
        "n_windows": n_windows, "total_windows": total_windows,
        "approaches": list(approaches), "windows": windows, "summary": summary,
    }


def _window_positives(window: InteractionGraph, history: InteractionGraph
                      ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], SeenItems]:
    """Users with an unseen window item, their positives as CSR (indptr, items), seen items."""
    pairs = np.stack(unique_pairs(window.user, window.item, window.num_items))
    active = np.unique(pairs[0])
    seen = SeenItems(history.subset(np.isin(history.user, active)))
    rows, items = seen.coo(active)
    n = max(window.num_items, 1)
    pairs = pairs[:, ~np.isin(pairs[0] * n + pairs[1], active[rows] * n + items)]
    users, counts = np.unique(pairs[0], return_counts=True)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return users, (indptr, pairs[1]), seen


def _score_window(approach: Approach, name: str, users: np.ndarray,
                  pos: tuple[np.ndarray, np.ndarray], seen: SeenItems, num_items: int,
                  k: int, batch_size: int) -> dict[str, Tensor]:
    indptr, items = pos
    parts: dict[str, list[Tensor]] = {}
    for lo in range(0, len(users), batch_size):
        hi = min(lo + batch_size, len(users))
        batch = users[lo:hi]
        with torch.no_grad():
            scores = check_scores(approach.score(torch.from_numpy(batch)), hi - lo,
                                  num_items, name)
        mask_(scores, *seen.coo(batch))
        rows = np.repeat(np.arange(hi - lo), np.diff(indptr[lo:hi + 1]))
        pos_index = torch.from_numpy(np.stack([rows, items[indptr[lo]:indptr[hi]]]))
        cut = min(k, num_items)
        values = ranking_metrics(top_k(scores, cut), pos_index, (cut,))
        for metric in ("recall", "ndcg", "hit"):
            parts.setdefault(f"{metric}@{k}", []).append(values[f"{metric}@{cut}"])
    return {key: torch.cat(v) for key, v in parts.items()}


class _Const(Recommender):
    """All-zero scores; used by the doctests."""

    def __init__(self, num_users: int, num_items: int) -> None:
        self.num_users, self.num_items = num_users, num_items

    def fit(self, graph: InteractionGraph, valid: InteractionGraph | None = None) -> _Const:
        return self

    def user_embeddings(self) -> Tensor:
        return torch.zeros(self.num_users, 1)

    def item_embeddings(self) -> Tensor:
        return torch.zeros(self.num_items, 1)
