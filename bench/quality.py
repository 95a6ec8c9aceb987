"""Does what streamrec serves beat "trending now"? The ratio table of the trend-aware ranker
against the best popularity list, static and day by day.

    python bench/quality.py --data ../shared/data/movietweetings/snap100K_ratings.dat
    python bench/quality.py --synthetic 100000 --seed 0
    python bench/quality.py --data ratings.dat --base lightgcn     # with base embeddings
    python bench/quality.py --data ratings.dat --items none        # without movies.dat

Static protocol (that of ../shared/tools/trending_floor.py): events by time, train = the
first 80%, validation = the next 10%, test = the rest. Every popularity candidate (all-time,
last W days for W in 1, 2, 3, 7, 14, 28, decayed counts with half-life H in 0.5, 1, 2, 3, 7,
14, 30 days) is fitted on train and scored on validation; the best is refitted on train +
validation and scored on test. The ranker is fitted on train + validation, choosing its own
parameters on the validation period (its held-back ninth), as ``streamrec retrain`` fits it.
Every test user with an unseen test item counts, cold ones included; items in the user's
fitted history are masked; Recall@K = |P ∩ R| / min(|P|, K). The interval is the 95%
percentile bootstrap (1,000 resamples of users, seed 0) of the paired per-user difference.

Day by day (``--days``, default 14): the ranker is fitted once on every event before the
first of the last ``--days`` days, then ranks each day's users at the day's start and takes
that day's events through :meth:`TrendRanker.update` (as ``ingest --update`` does); the
popularity list, its kind chosen by next-day recall on the ``--days`` days before, is
recounted at every day's start. Recall is pooled over (day, user) pairs. The "as served"
rows rank each (day, user) pair at the user's first event of that day instead, with every
earlier event applied (other users' events of the day included): the ranker through
:meth:`TrendRanker.update`, as the service ranks, and the popularity list recounted then too,
the stricter comparison.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.baselines import (  # noqa: E402
    HALF_LIFE_DAYS,
    NAMES,
    WINDOW_DAYS,
    TrendingPopularity,
)
from evaluation.bootstrap import bootstrap_ci  # noqa: E402
from models.base import InteractionGraph  # noqa: E402
from models.trend import TrendRanker  # noqa: E402
from models.trend.tuning import ValidationTask  # noqa: E402

DAY = 86_400.0
#: the popularity lists tried, as in every evaluation report (evaluation.baselines)
CANDIDATES = ([("all", None)] + [("recent", d) for d in WINDOW_DAYS]
              + [("decayed", h) for h in HALF_LIFE_DAYS])


def popularity(graph: InteractionGraph, kind: str, days: float | None) -> np.ndarray:
    """float64 ``[num_items]`` scores of a popularity list at the graph's newest event (the
    report's :class:`TrendingPopularity`: all-time counts break ties)."""
    return TrendingPopularity(kind, days).fit(graph).item_embeddings().double().numpy()[:, 0]


def label(kind: str, days: float | None) -> str:
    return NAMES[kind] if days is None else f"{NAMES[kind]} {days:g}d"


def per_user_popularity(task: ValidationTask, scores: np.ndarray) -> np.ndarray:
    return task.per_user(np.tile(np.pad(scores, (0, task.num_items - len(scores))),
                                 (len(task.users), 1)))


def per_user_model(task: ValidationTask, model: TrendRanker) -> np.ndarray:
    out = []
    for lo in range(0, len(task.users), 1024):
        users = torch.from_numpy(task.users[lo:lo + 1024])
        out.append(model.score(users).double().numpy())
    scores = np.concatenate(out)
    return task.per_user(np.pad(scores, ((0, 0), (0, task.num_items - scores.shape[1])),
                                constant_values=-np.inf))


def ranker(args: argparse.Namespace, valid_fraction: float) -> TrendRanker:
    base_kwargs = {"progress": False} if args.base else None
    horizon = None if args.horizon_days == 0 else args.horizon_days * DAY
    return TrendRanker(base=args.base, base_kwargs=base_kwargs, valid_fraction=valid_fraction,
                       horizon_seconds=horizon, k=args.k, seed=args.seed,
                       content=args.content)


def static(graph: InteractionGraph, args: argparse.Namespace) -> None:
    order = np.argsort(graph.ts, kind="stable")
    t1, t2 = graph.ts[order[int(0.8 * len(order))]], graph.ts[order[int(0.9 * len(order))]]
    train, history = graph.subset(graph.ts < t1), graph.subset(graph.ts < t2)
    valid_task = ValidationTask(train, graph.subset((graph.ts >= t1) & (graph.ts < t2)),
                                k=args.k, max_users=10**9)
    test_task = ValidationTask(history, graph.subset(graph.ts >= t2), k=args.k,
                               max_users=10**9)
    valid = {c: per_user_popularity(valid_task, popularity(train, *c)).mean()
             for c in CANDIDATES}
    best = max(CANDIDATES, key=lambda c: valid[c])
    rows = {f"popularity, {label(*c)}": per_user_popularity(test_task, popularity(history, *c))
            for c in dict.fromkeys([("all", None), best])}
    started = time.perf_counter()
    model = ranker(args, valid_fraction=1 - train.num_edges / history.num_edges).fit(history)
    fit_seconds = time.perf_counter() - started
    name = "trend ranker" + (f" (+{args.base})" if args.base else "")
    rows[name] = per_user_model(test_task, model)
    warm = np.isin(test_task.users, history.user)
    ref = rows[f"popularity, {label(*best)}"]
    print(f"\n## static: {graph.num_edges} events, test users {len(ref)} "
          f"({warm.mean():.0%} warm), Recall@{args.k}; best baseline on validation: "
          f"{label(*best)} (valid {valid[best]:.4f})")
    print(f"| approach | Recall@{args.k} | warm | cold | vs best baseline | 95% CI of diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key, values in rows.items():
        (lo, hi), = bootstrap_ci((values - ref)[:, None], n_boot=1000, level=0.95, seed=0)
        print(f"| {key} | {values.mean():.4f} | {values[warm].mean():.4f} | "
              f"{values[~warm].mean():.4f} | {values.mean() / ref.mean():.3f}x | "
              f"[{lo:+.4f}, {hi:+.4f}] |")
    print(f"\nranker fit {fit_seconds:.1f}s, chosen on validation: "
          f"{model.fitted_summary()['fitted']}")


def daily(graph: InteractionGraph, args: argparse.Namespace) -> None:
    end = float(graph.ts.max())
    first = np.floor((end - args.days * DAY - graph.ts.min()) / DAY) * DAY + graph.ts.min()
    days = [first + d * DAY for d in range(args.days + 1)]

    warm_pairs: list[np.ndarray] = []

    def pooled(starts: list[float], scorer) -> np.ndarray:
        out = []
        for lo in starts:
            history = graph.subset(graph.ts < lo)
            task = ValidationTask(history, graph.subset((graph.ts >= lo) & (graph.ts < lo + DAY)),
                                  k=args.k, max_users=10**9)
            if len(task.users):
                out.append(scorer(history, task, lo))
                warm_pairs.append(np.isin(task.users, history.user))
        return np.concatenate(out)

    val_days = [first - d * DAY for d in range(args.days, 0, -1)]
    val = {c: pooled(val_days, lambda h, t, _lo, c=c: per_user_popularity(
        t, popularity(h, *c))).mean() for c in CANDIDATES}
    best = max(CANDIDATES, key=lambda c: val[c])
    warm_pairs.clear()
    pop = pooled(days[:-1], lambda h, t, _lo: per_user_popularity(t, popularity(h, *best)))
    warm = np.concatenate(warm_pairs)
    model = ranker(args, valid_fraction=0.1).fit(graph.subset(graph.ts < first))
    applied = [first]

    def ranker_scores(history: InteractionGraph, task: ValidationTask, lo: float) -> np.ndarray:
        new = (graph.ts >= applied[-1]) & (graph.ts < lo)
        model.update(graph.user[new], graph.item[new], graph.ts[new])
        applied.append(lo)
        return per_user_model(task, model)

    ours = pooled(days[:-1], ranker_scores)
    (lo, hi), = bootstrap_ci((ours - pop)[:, None], n_boot=1000, level=0.95, seed=0)

    # as served: each user ranked at their first event of the day, every earlier event
    # (other users' events that day included) applied, as the service ranks them
    model_served = ranker(args, valid_fraction=0.1).fit(graph.subset(graph.ts < first))
    served_applied = [first]

    def at_first_event(task: ValidationTask, lo: float, score_rows) -> np.ndarray:
        day = (graph.ts >= lo) & (graph.ts < lo + DAY) & np.isin(graph.user, task.users)
        firsts = np.full(len(task.users), np.inf)
        np.minimum.at(firsts, np.searchsorted(task.users, graph.user[day]), graph.ts[day])
        scores = np.empty((len(task.users), task.num_items))
        for t in np.unique(firsts):
            rows = np.flatnonzero(firsts == t)
            scores[rows] = score_rows(task.users[rows], t)
        return task.per_user(scores)

    def ranker_rows(users: np.ndarray, t: float) -> np.ndarray:
        new = (graph.ts >= served_applied[-1]) & (graph.ts < t)
        model_served.update(graph.user[new], graph.item[new], graph.ts[new])
        served_applied.append(t)
        out = model_served.score(torch.from_numpy(users)).double().numpy()
        return np.pad(out, ((0, 0), (0, graph.num_items - out.shape[1])),
                      constant_values=-np.inf)

    def popularity_rows(users: np.ndarray, t: float) -> np.ndarray:
        row = popularity(graph.subset(graph.ts < t), *best)
        return np.tile(np.pad(row, (0, graph.num_items - len(row))), (len(users), 1))

    served_ours = pooled(days[:-1], lambda _h, task, lo: at_first_event(task, lo, ranker_rows))
    served_pop = pooled(days[:-1], lambda _h, task, lo: at_first_event(task, lo,
                                                                       popularity_rows))
    print(f"\n## day by day: last {args.days} days, {len(pop)} (day, user) pairs "
          f"({warm.mean():.0%} warm: with events before the day); popularity kind chosen on "
          f"the {args.days} days before: {label(*best)}")
    print(f"| approach | Recall@{args.k} | warm | cold | vs popularity refreshed daily "
          "| 95% CI of diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| popularity {label(*best)}, refreshed daily | {pop.mean():.4f} | "
          f"{pop[warm].mean():.4f} | {pop[~warm].mean():.4f} | 1.000x | |")
    print(f"| trend ranker, fitted once + per-event updates | {ours.mean():.4f} | "
          f"{ours[warm].mean():.4f} | {ours[~warm].mean():.4f} | "
          f"{ours.mean() / pop.mean():.3f}x | [{lo:+.4f}, {hi:+.4f}] |")
    print(f"| popularity {label(*best)}, as served (at each user's first event of the day) | "
          f"{served_pop.mean():.4f} | {served_pop[warm].mean():.4f} | "
          f"{served_pop[~warm].mean():.4f} | {served_pop.mean() / pop.mean():.3f}x | |")
    for name, ref in (("refreshed daily", pop), ("as served", served_pop)):
        (lo, hi), = bootstrap_ci((served_ours - ref)[:, None], n_boot=1000, level=0.95, seed=0)
        print(f"| trend ranker, as served; ratio vs popularity {name} | "
              f"{served_ours.mean():.4f} | {served_ours[warm].mean():.4f} | "
              f"{served_ours[~warm].mean():.4f} | {served_ours.mean() / ref.mean():.3f}x | "
              f"[{lo:+.4f}, {hi:+.4f}] |")
    print(f"\nranker chosen on its validation: {model.fitted_summary()['fitted']}")


def load(args: argparse.Namespace) -> InteractionGraph:
    args.content = None
    if args.data:
        from evaluation.data import load_file, load_item_content, sibling_item_file

        data = load_file(args.data, args.format)
        if args.items is None:
            args.items = sibling_item_file(args.data)
        if args.items and str(args.items) != "none":
            args.content = load_item_content(args.items, data.item_ids)
        else:
            args.items = None
        return data.graph
    from stream.synthetic import generate

    s = generate(n_events=args.synthetic, seed=args.seed)
    return InteractionGraph.from_arrays(s.user, s.item, s.ts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="a rating file (MovieLens / MovieTweetings formats)")
    parser.add_argument("--format", default="movielens", help="its format (default: movielens)")
    parser.add_argument("--synthetic", type=int, default=100_000,
                        help="events of the synthetic stream when --data is absent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--days", type=int, default=14, help="day-by-day test days (0: skip)")
    parser.add_argument("--horizon-days", type=float, default=1.0,
                        help="the ranker's validation re-ranking step (0: rank once)")
    parser.add_argument("--base", default=None, help="base embedding model, e.g. lightgcn")
    parser.add_argument("--items", help="item metadata (movies.dat, movies.csv) for the "
                        "ranker's content terms (default: the movies file beside --data, if "
                        "any; 'none': without)")
    parser.add_argument("--no-static", action="store_true", help="day by day only")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    graph = load(args)
    print(f"# {args.data or f'synthetic {args.synthetic} events, seed {args.seed}'}"
          + (f", items {args.items}" if args.items else ""))
    if not args.no_static:
        static(graph, args)
    if args.days:
        daily(graph, args)


if __name__ == "__main__":
    main()
