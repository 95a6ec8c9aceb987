"""The offline temporal protocol: rank unseen items for every test user and score the lists.

Choices, stated in every report:

* **positives** are a user's distinct test-period items, items first seen in test included;
  an item the user already has in the model's training history is masked and so can never
  be recommended, and is therefore not a positive either (re-consumption is out of scope).
* **masking**: items the user interacted with in the *history the model was fitted on*
  (``fit_on="train"``: events before ``t1``; ``"train+valid"``: events before ``t2``).
* **cold-start users** (no event in that history) are ranked by the code path
  ``streamrec recommend`` takes for them: the model's :meth:`Recommender.cold_scores` on the
  history, by default the service's recent-window popularity
  (:class:`models.cold_start.RecentPopularity`), not the model's untrained embedding rows.
* recall is reported over all positives (``recall@K``) and over positives that exist in
  the history (``recall_known@K``), since no model can learn an item it never saw.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from evaluation.bootstrap import bootstrap_ci
from evaluation.metrics import RANKING_METRICS, RankingAccumulator, ranking_metrics
from evaluation.ranking import (
    SeenItems,
    check_scores,
    fallback_,
    mask_,
    popularity,
    top_k,
    unique_pairs,
)
from evaluation.split import FitOn, TemporalSplit
from models.base import InteractionGraph, Recommender

#: score-matrix elements per batch of users (float32: 32 MiB)
DEFAULT_BATCH_ELEMENTS = 1 << 23


@dataclass(frozen=True, eq=False)
class EvaluationTask:
    """The test users, their positives, masks and slice labels; shared by every model.

    Build it with :meth:`from_split`. Arrays over evaluated users are ``[U]``, sorted by user.

    >>> from models.base import InteractionGraph
    >>> from evaluation.split import temporal_split
    >>> g = InteractionGraph.from_arrays([0, 0, 1, 0, 1, 2], [0, 1, 0, 1, 2, 1], range(6))
    >>> task = EvaluationTask.from_split(temporal_split(g, t1=3, t2=4))
    >>> task.users.tolist(), task.cold.tolist()       # user 0's test item 1 is already seen
    ([1, 2], [False, True])
    """

    users: np.ndarray
    pos_indptr: np.ndarray
    pos_items: np.ndarray
    seen: SeenItems
    popularity: torch.Tensor
    known_items: np.ndarray
    head_items: np.ndarray
    cold: np.ndarray
    bucket: np.ndarray
    bucket_labels: list[str]
    fit_on: str
    num_items: int
    dropped_users: int
    history: InteractionGraph
    info: dict[str, object] = field(default_factory=dict)

    @classmethod
    def from_split(cls, split: TemporalSplit, *, fit_on: FitOn = "train", **options: float
                   ) -> EvaluationTask:
        """The test period of ``split`` against ``split.history(fit_on)``, the history the
        models are fitted on and that is masked (default: ``"train"``); ``options``
        (``head_fraction``, ``activity_buckets``) as in :meth:`from_periods`."""
        return cls.from_periods(split.history(fit_on), split.test, fit_on=fit_on,
                                **options)  # type: ignore[arg-type]

    @classmethod
    def from_periods(
        cls,
        history: InteractionGraph,
        test: InteractionGraph,
        *,
        fit_on: str = "train",
        head_fraction: float = 0.2,
        activity_buckets: int = 4,
    ) -> EvaluationTask:
        """The task of ranking ``test``'s unseen items after fitting on ``history``.

        Args:
            history: the events the models are fitted on; masked, and the cold-start rule.
            test: the later events whose unseen items are the positives.
            fit_on: the label of ``history`` in reports. (default: ``"train"``)
            head_fraction: share of history items, by descending interaction count (ties to
                the lower index), that form the head; the rest, and items absent from the
                history, form the tail. (default: ``0.2``)
            activity_buckets: quantile buckets of warm users' history event counts, over
                the evaluated users. (default: ``4``)
        """
        if not 0.0 < head_fraction < 1.0:
            raise ValueError(f"head_fraction must lie in (0, 1), got {head_fraction}")
        if activity_buckets < 1:
            raise ValueError(f"activity_buckets must be >= 1, got {activity_buckets}")
        seen = SeenItems(history)
        n_items = test.num_items
        pairs = np.stack(unique_pairs(test.user, test.item, n_items))
        seen_rows, seen_items = seen.coo(np.arange(seen.num_users))
        already = np.isin(pairs[0] * n_items + pairs[1], seen_rows * n_items + seen_items)
        pos = pairs[:, ~already]
        users, counts = np.unique(pos[0], return_counts=True)
        if not len(users):
            raise ValueError("no test user has an unseen test item; nothing to evaluate")
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        pop = popularity(history, n_items)
        known = pop.numpy() > 0
        known_ids = np.flatnonzero(known)
        order = known_ids[np.lexsort((known_ids, -pop.numpy()[known_ids]))]
        head = np.zeros(n_items, dtype=bool)
        head[order[: math.ceil(head_fraction * len(order))]] = True
        activity = seen.count[users]
        cold = activity == 0
        bucket, labels = _activity_buckets(activity, activity_buckets)
        return cls(
            users=users.astype(np.int64), pos_indptr=indptr, pos_items=pos[1].astype(np.int64),
            seen=seen, popularity=pop, known_items=known, head_items=head, cold=cold,
            bucket=bucket, bucket_labels=labels, fit_on=fit_on, num_items=n_items,
            dropped_users=int(np.unique(test.user).size - len(users)), history=history,
            info={"head_items": int(head.sum()), "known_items": int(known.sum())},
        )

    def positives(self, lo: int, hi: int) -> torch.Tensor:
        """int64 ``[2, P]`` positives of evaluated users ``lo:hi`` as (row - lo, item)."""
        a, b = self.pos_indptr[lo], self.pos_indptr[hi]
        rows = np.repeat(np.arange(hi - lo), np.diff(self.pos_indptr[lo:hi + 1]))
        return torch.from_numpy(np.stack([rows, self.pos_items[a:b]]).astype(np.int64))


@dataclass
class ModelEvaluation:
    """Result of :func:`evaluate_model`: means, bootstrap intervals, slices, per-user values."""

    metrics: dict[str, float]
    ci: dict[str, tuple[float, float]]
    slices: dict[str, dict[str, dict[str, float]]]
    per_user: dict[str, np.ndarray]
    seconds: float

    def as_dict(self) -> dict[str, object]:
        """Flat ``{"recall@20": 0.1, "recall@20_ci": [lo, hi], ...}`` for metrics.json."""
        out: dict[str, object] = dict(self.metrics)
        for key, (lo, hi) in self.ci.items():
            out[f"{key}_ci"] = [lo, hi]
        return out


def evaluate_model(
    model: Recommender,
    task: EvaluationTask,
    *,
    ks: Sequence[int] = (10, 20, 50),
    batch_size: int | None = None,
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    progress: bool = False,
    name: str | None = None,
    slices: bool = True,
) -> ModelEvaluation:
    """Rank every evaluated user's unseen items with ``model`` and score the top-K lists.

    Args:
        model: a recommender already fitted on ``split.history(task.fit_on)``.
        task: from :meth:`EvaluationTask.from_split`.
        ks: cut-offs. (default: ``(10, 20, 50)``)
        batch_size: users scored at once. (default: as many as fit 8M scores)
        n_bootstrap: bootstrap resamples of users for the intervals. (default: ``1000``)
        ci_level: interval coverage. (default: ``0.95``)
        seed: seed of the bootstrap. (default: ``0``)
        progress: show a progress bar over batches. (default: ``False``)
        name: the model's name in messages. (default: its class name)
        slices: also compute the known/head/tail variants and the slices; ``False`` keeps
            the plain metrics only (e.g. for validation sweeps). (default: ``True``)

    Cold-start users get ``model.cold_scores(task.history)``, the ranking ``recommend``
    serves them.

    ``per_user`` of the result holds float64 ``[U]`` arrays in ``task.users`` order: the
    metrics, ``known:``/``head:``/``tail:`` variants over restricted positives (NaN where a
    user has none) and ``head_share@K``. Users with fewer than ``K`` unmasked items get
    masked items in their tail of the list, which count as misses.

    >>> from models.base import InteractionGraph
    >>> from evaluation.split import temporal_split
    >>> class Ones(Recommender):
    ...     def fit(self, graph, valid=None): return self
    ...     def user_embeddings(self): return torch.ones(3, 1)
    ...     def item_embeddings(self): return torch.ones(3, 1)
    >>> g = InteractionGraph.from_arrays([0, 1, 0, 1], [0, 1, 2, 0], [1.0, 2, 3, 4])
    >>> task = EvaluationTask.from_split(temporal_split(g, t1=2, t2=3))
    >>> ev = evaluate_model(Ones(), task, ks=(1,), n_bootstrap=10)
    >>> ev.metrics["recall@1"], ev.per_user["recall@1"].tolist()
    (0.5, [0.0, 1.0])
    """
    who = name or type(model).__name__
    k_max = max(ks)
    if k_max > task.num_items:
        raise ValueError(f"K={k_max} exceeds the catalogue of {task.num_items} items")
    n = len(task.users)
    batch_size = batch_size or max(1, DEFAULT_BATCH_ELEMENTS // max(task.num_items, 1))
    acc = RankingAccumulator(ks, num_items=task.num_items, popularity=task.popularity)
    extra: dict[str, list[torch.Tensor]] = {}
    head = torch.from_numpy(task.head_items)
    known = torch.from_numpy(task.known_items)
    started = time.perf_counter()
    cold_scores = cold_user_scores(model, task, who)
    for lo in tqdm(range(0, n, batch_size), desc=f"evaluate {who}", disable=not progress,
                   leave=False):
        hi = min(lo + batch_size, n)
        top = rank_users(model, task, lo, hi, k_max, cold_scores, name=who)
        pos = task.positives(lo, hi)
        acc.update(top, pos)
        if not slices:
            continue
        for tag, keep in (("known", known), ("head", head), ("tail", ~head)):
            sub = ranking_metrics(top, pos[:, keep[pos[1]]], ks)
            for key, value in sub.items():
                extra.setdefault(f"{tag}:{key}", []).append(value)
        for k in ks:
            extra.setdefault(f"head_share@{k}", []).append(head[top[:, :k]].double().mean(1))
    per_user = acc.per_user()
    per_user.update({key: torch.cat(parts).numpy() for key, parts in extra.items()})
    metrics = acc.compute()
    if not slices:
        return ModelEvaluation(metrics=metrics, ci={}, slices={}, per_user=per_user,
                               seconds=time.perf_counter() - started)
    for k in ks:
        metrics[f"recall_known@{k}"] = _nanmean(per_user[f"known:recall@{k}"])
        metrics[f"head_share@{k}"] = _nanmean(per_user[f"head_share@{k}"])
    ci_keys = [f"{m}@{k}" for k in ks for m in RANKING_METRICS] + [
        f"recall_known@{k}" for k in ks]
    columns = np.stack([per_user[key.replace("recall_known", "known:recall")]
                        for key in ci_keys], axis=1)
    bounds = bootstrap_ci(columns, n_boot=n_bootstrap, level=ci_level, seed=seed)
    ci = {key: (float(lo), float(hi)) for key, (lo, hi) in zip(ci_keys, bounds, strict=True)}
    return ModelEvaluation(metrics=metrics, ci=ci, slices=_slices(task, per_user, ks),
                           per_user=per_user, seconds=time.perf_counter() - started)


def cold_user_scores(model: Recommender, task: EvaluationTask, name: str) -> torch.Tensor:
    """float32 ``[num_items]``: ``model.cold_scores(task.history)``, checked."""
    with torch.no_grad():
        scores = model.cold_scores(task.history)
    return check_scores(scores.view(1, -1), 1, task.num_items, f"{name}.cold_scores")[0]


def rank_users(model: Recommender, task: EvaluationTask, lo: int, hi: int, k: int,
               cold_scores: torch.Tensor | None = None, *, name: str | None = None
               ) -> torch.Tensor:
    """int64 ``[hi - lo, k]`` top-``k`` items of evaluated users ``lo:hi``, as scored.

    Warm users get ``model.score``; cold users ``cold_scores`` (default:
    ``model.cold_scores(task.history)``, what ``recommend`` serves them); items in a user's
    history are masked; ties go to the lower item index.
    """
    who = name or type(model).__name__
    users = task.users[lo:hi]
    if cold_scores is None:
        cold_scores = cold_user_scores(model, task, who)
    with torch.no_grad():
        scores = check_scores(model.score(torch.from_numpy(users)), hi - lo,
                              task.num_items, who)
    fallback_(scores, torch.from_numpy(task.cold[lo:hi]), cold_scores)
    mask_(scores, *task.seen.coo(users))
    return top_k(scores, k)


def _slices(task: EvaluationTask, per_user: dict[str, np.ndarray], ks: Sequence[int]
            ) -> dict[str, dict[str, dict[str, float]]]:
    keys = [f"{m}@{k}" for k in ks for m in RANKING_METRICS]

    def summary(rows: np.ndarray, prefix: str = "") -> dict[str, float]:
        values = {key: _nanmean(per_user[prefix + key][rows]) for key in keys}
        defined = ~np.isnan(per_user[prefix + keys[0]][rows])
        return {"n_users": int(defined.sum()), **values}

    out: dict[str, dict[str, dict[str, float]]] = {"users": {}, "activity": {}, "items": {}}
    for label, rows in (("warm", ~task.cold), ("cold", task.cold)):
        out["users"][label] = summary(rows)
    for b, label in enumerate(task.bucket_labels):
        out["activity"][label] = summary(task.bucket == b)
    everyone = np.ones(len(task.users), dtype=bool)
    for tag in ("head", "tail"):
        out["items"][tag] = summary(everyone, prefix=f"{tag}:")
    return out


def _activity_buckets(activity: np.ndarray, n: int) -> tuple[np.ndarray, list[str]]:
    """Bucket ids ``[U]`` and labels: cold users first, then warm-count quantile buckets."""
    bucket = np.zeros(len(activity), dtype=np.int64)
    labels: list[str] = []
    warm = activity > 0
    if (~warm).any():
        labels.append("cold (0)")
    if warm.any():
        counts = activity[warm]
        edges = np.unique(np.quantile(counts, np.arange(1, n) / n, method="lower"))
        raw = np.searchsorted(edges, counts, side="left")
        for b in np.unique(raw):
            members = counts[raw == b]
            lo, hi = int(members.min()), int(members.max())
            labels.append(f"{lo}" if lo == hi else f"{lo}-{hi}")
            bucket[np.flatnonzero(warm)[raw == b]] = len(labels) - 1
    return bucket, labels


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")

