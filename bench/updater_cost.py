"""Incremental updater vs full retrain on a seeded synthetic stream (stream.synthetic): the
cost of keeping one day fresh, and how much of a retrain's accuracy that buys back.

    python bench/updater_cost.py                    # 100k events over 30 days, days 14-28
    python bench/updater_cost.py --day 26 --days 3  # one 3-day window (noisy, see below)
    python bench/updater_cost.py --events 30000 --days 1   # quicker
    python bench/updater_cost.py --data ../shared/data/movietweetings/snap100K_ratings.dat
                                                    # real data: its last 14 days before a test day

Protocol (days counted from the stream's start), for each of ``--days`` consecutive days D
(figures are averaged over them, as one day's Recall@20 is noisy): the base is a LightGCN
fitted on events before day D (the stale model); "incremental" streams day D's events
through the updater in micro-batches on top of that base; "retrain" fits the same LightGCN
on events before day D + 1. All three are scored by Recall@20 = |P ∩ top-20| / min(|P|, 20)
on day D + 1, with items seen before day D + 1 masked and users without earlier events
skipped. A model without a row for a user (the stale base for users new on day D) scores
zero for it.

The updater itself is trained by the live-update scheme on the stale base's training
window (a LightGCN on its first 80%, the updater on the rest); that cost belongs to the
daily retrain and is printed separately. Targets: incremental time <= 10% of a retrain,
incremental recall >= 80% of the way from stale to retrain. Timings on a shared machine
are noisy; read the ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.data import load_file  # noqa: E402
from models import make_model  # noqa: E402
from models.base import InteractionGraph, Recommender  # noqa: E402
from models.incremental_updater import IncrementalUpdater  # noqa: E402
from models.live_update import (  # noqa: E402
    LiveUpdateHistory,
    fit_base_with,
    train_live_update,
)
from models.neighbour_buffer import NeighbourBuffer  # noqa: E402
from models.training import recall_at_k  # noqa: E402
from models.updater import USER_AGGREGATIONS  # noqa: E402
from stream.sources import FORMATS  # noqa: E402
from stream.synthetic import DAY, generate  # noqa: E402


def padded(table: torch.Tensor, rows: int) -> torch.Tensor:
    """``table`` with zero rows appended up to ``rows`` (no embedding: score 0)."""
    out = torch.zeros(rows, table.shape[1])
    out[: len(table)] = table
    return out


def lightgcn(args: argparse.Namespace) -> Recommender:
    return make_model("lightgcn", embedding_dim=args.dim, num_layers=args.layers,
                      epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                      seed=args.seed, device=args.device, progress=False)


def fit(
    graph: InteractionGraph, args: argparse.Namespace
) -> tuple[torch.Tensor, torch.Tensor, float]:
    start = time.perf_counter()
    model = lightgcn(args).fit(graph)
    return model.user_embeddings(), model.item_embeddings(), time.perf_counter() - start


def one_day(
    full: InteractionGraph, t0: float, d: int, args: argparse.Namespace
) -> dict[str, float]:
    """Stale base before day ``d``, incremental over day ``d``, retrain before ``d + 1``;
    Recall@20 on day ``d + 1`` and the timings."""
    n_users, n_items = full.num_users, full.num_items
    t_d, t_next, t_end = (t0 + k * DAY for k in (d, d + 1, d + 2))
    before_d = full.before(t_d)
    stale_graph = InteractionGraph.from_arrays(  # index spaces as known before day D
        before_d.user, before_d.item, before_d.ts,
        num_users=int(before_d.user.max()) + 1, num_items=int(before_d.item.max()) + 1)
    day = np.flatnonzero((full.ts >= t_d) & (full.ts < t_next))
    seen, test = full.before(t_next), full.subset((full.ts >= t_next) & (full.ts < t_end))
    print(f"\n== day {d}: base window {stale_graph.num_edges} events, day {d} {len(day)} "
          f"events, test day {d + 1} {test.num_edges} events")

    base_user, base_item, t_base = fit(stale_graph, args)
    start, history = time.perf_counter(), LiveUpdateHistory()
    module = train_live_update(
        stale_graph, fit_base_with(lightgcn(args)), num_neighbours=args.neighbours,
        epochs=args.updater_epochs, lr=args.updater_lr, update=args.update, seed=args.seed,
        device=args.device, user_aggregation=args.user_aggregation,
        **({} if args.user_history_weight is None
           else {"user_history_weight": args.user_history_weight}),
        progress=False, history=history,
    )
    t_train = time.perf_counter() - start
    valid = ", ".join(f"{e}: {v:.4f}" for e, v in history.valid)
    print(f"stale base fit {t_base:.1f} s; updater training (LightGCN on 80% + live update "
          f"on 20%) {t_train:.1f} s, validation recall@20 by epoch {{{valid}}}, kept epoch "
          f"{history.best_epoch}")

    start = time.perf_counter()
    buffer = NeighbourBuffer.from_graph(stale_graph, args.neighbours)
    t_buffer = time.perf_counter() - start
    inc = IncrementalUpdater(base_user, base_item, module, buffer, device=args.device)
    start, touched = time.perf_counter(), 0
    for lo in range(0, len(day), args.micro_batch):
        e = day[lo: lo + args.micro_batch]
        res = inc.update(full.user[e], full.item[e], full.ts[e], full.weight[e])
        touched += len(res.user_idx) + len(res.item_idx)
    t_inc = time.perf_counter() - start
    retrain_user, retrain_item, t_retrain = fit(seen, args)

    # Users active on day D are the ones the updater moves; the others change rank only
    # through the items it moved. Splitting the test users shows where a gap is left.
    active = np.zeros(n_users, bool)
    active[full.user[day]] = True
    tests = {"": test, "_active": test.subset(active[test.user]),
             "_inactive": test.subset(~active[test.user])}

    def recall(user: torch.Tensor, item: torch.Tensor, part: str) -> float:
        try:
            return recall_at_k(padded(user, n_users), padded(item, n_items), seen, tests[part],
                               k=20)
        except ValueError:  # no scorable user in this part of the test day
            return float("nan")

    out: dict[str, float] = {"t_inc": t_inc, "t_retrain": t_retrain, "events": len(day)}
    for part in tests:
        out["stale" + part] = recall(base_user, base_item, part)
        out["incremental" + part] = recall(inc.user_embeddings(), inc.item_embeddings(), part)
        out["retrain" + part] = recall(retrain_user, retrain_item, part)
    print(f"incremental: {t_inc:.2f} s for {len(day)} events ({len(day) / t_inc:,.0f} "
          f"events/s, {touched} node refreshes, micro-batches of {args.micro_batch}; buffer "
          f"rebuild {t_buffer:.2f} s); full retrain {t_retrain:.1f} s; ratio "
          f"{100 * t_inc / t_retrain:.2f}%")
    print(f"Recall@20 on day {d + 1}: stale {out['stale']:.4f}, base + incremental "
          f"{out['incremental']:.4f}, full retrain {out['retrain']:.4f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--day", type=int, default=None,
                    help="first day D streamed incrementally (default: 14 on the synthetic "
                         "stream; with --data, the last --days days that leave a test day)")
    ap.add_argument("--days", type=int, default=None,
                    help="consecutive days D to average over (default: 15 on the synthetic "
                         "stream, 14 with --data): a day's gap between stale and retrain is "
                         "about 0.01, and 3-day windows closed from 52%% to 143%% of it")
    ap.add_argument("--data", default=None,
                    help="an interaction file instead of the synthetic stream, e.g. "
                         "../shared/data/movietweetings/snap100K_ratings.dat (days count "
                         "from its first event)")
    ap.add_argument("--format", default="movielens", choices=FORMATS, help="of --data")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=500, help="events per update() call")
    ap.add_argument("--neighbours", type=int, default=20)
    ap.add_argument("--updater-epochs", type=int, default=3)
    ap.add_argument("--updater-lr", type=float, default=1e-3, help="Adam, live-update training")
    ap.add_argument("--update", default="gru", choices=["gru", "moving_average", "mlp"])
    ap.add_argument("--user-aggregation", default="lightgcn", choices=USER_AGGREGATIONS,
                    help="how the updater forms a user's state (TemporalUpdater)")
    ap.add_argument("--user-history-weight", type=float, default=None,
                    help="w of the users' updates (default: TemporalUpdater's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.days is None:
        args.days = 14 if args.data else 15
    if args.data:
        loaded = load_file(args.data, args.format)
        full, start = loaded.graph, float(loaded.graph.ts.min())
        total_days = int(np.ceil((float(full.ts.max()) - start) / DAY))
        source = f"{loaded.name}: {full.num_edges} events over {total_days} days"
        if args.day is None:
            args.day = total_days - args.days - 1
    else:
        s = generate(n_events=args.events, seed=args.seed)
        n_users, n_items = s.config.sizes()
        full = InteractionGraph.from_arrays(s.user, s.item, s.ts, num_users=n_users,
                                            num_items=n_items)
        start, total_days = s.config.start, int(s.config.days)
        source = f"synthetic stream: {args.events} events over {total_days} days"
        if args.day is None:
            args.day = 14
    if args.day < 1 or args.days < 1 or args.day + args.days + 1 > total_days:
        raise SystemExit(f"--day/--days must leave a test day inside the {total_days} days")
    print(f"{source}, {full.num_users} users, {full.num_items} items; LightGCN d={args.dim}, "
          f"{args.layers} layers, {args.epochs} epochs; updater '{args.update}', users by "
          f"'{args.user_aggregation}'; torch "
          f"threads {torch.get_num_threads()}")
    days = [one_day(full, start, d, args) for d in range(args.day, args.day + args.days)]

    mean = {k: float(np.nanmean([r[k] for r in days])) for k in days[0]}
    print(f"\n== mean over days {args.day}..{args.day + args.days - 1}")
    print(f"time: incremental {mean['t_inc']:.2f} s per day of {mean['events']:.0f} events, "
          f"full retrain {mean['t_retrain']:.1f} s: ratio "
          f"{100 * mean['t_inc'] / mean['t_retrain']:.2f}% (target <= 10%)")
    print("Recall@20 on the next day:")
    for key, name in (("stale", "stale base"), ("incremental", "base + incremental"),
                      ("retrain", "full retrain")):
        print(f"  {name:<20} {mean[key]:.4f}   per day: "
              + ", ".join(f"{r[key]:.4f}" for r in days))
    for part, who in (("", ""), ("_active", " for users active on day D"),
                      ("_inactive", " for the other users (moved only through items)")):
        stale, inc, retrained = (mean[k + part] for k in ("stale", "incremental", "retrain"))
        figures = f"(stale {stale:.4f}, incremental {inc:.4f}, retrain {retrained:.4f})"
        if retrained > stale:
            print(f"incremental closes {100 * (inc - stale) / (retrained - stale):.0f}% of the "
                  f"stale -> retrain gap{who} {figures}" + ("" if part else " (target >= 80%)"))
        else:
            print(f"no gap to close{who}: the retrain does not beat the stale base {figures}")


if __name__ == "__main__":
    main()
