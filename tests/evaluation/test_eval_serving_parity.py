"""The evaluation mirrors serving: the refit is what `retrain` fits, cold users get what
`recommend` serves, +incremental runs the updater a retrain publishes, and the baselines'
windows are chosen on validation only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.baselines import TrendingPopularity, list_recall
from evaluation.incremental import IncrementalApproach
from evaluation.protocol import EvaluationTask, evaluate_model, rank_users
from evaluation.report import to_json
from evaluation.runner import run_evaluation
from evaluation.split import temporal_split
from models import make_model
from models.base import InteractionGraph
from models.updater import TemporalUpdater
from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.events import Event
from streamrec.queries import QueryService
from streamrec.retrain import RetrainPlan, fit_model, retrain, split_for_validation

DAY = 86_400.0
MF = {"epochs": 4, "embedding_dim": 8, "lr": 0.05, "progress": False}


def _stream(n: int = 900, users: int = 40, items: int = 50, seed: int = 0) -> InteractionGraph:
    """Distinct event times 10 minutes apart; users with a taste for one of five groups."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, n)
    item = (user % 5) * (items // 5) + rng.integers(0, items // 5, n)
    item = np.where(rng.random(n) < 0.3, rng.integers(0, items, n), item)
    return InteractionGraph.from_arrays(user, item, 1.6e9 + np.arange(n) * 600.0,
                                        num_users=users, num_items=items)


def test_the_refit_on_train_plus_valid_is_what_retrain_fits() -> None:
    graph = _stream()
    out = run_evaluation(graph, ["mf"], model_kwargs={"mf": MF}, ks=(5, 10), n_bootstrap=20,
                         streaming=False, baselines=False, progress=False)
    split = temporal_split(graph)
    history = split.history("train+valid")
    plan = RetrainPlan("mf", epochs=MF["epochs"], dim=MF["embedding_dim"], progress=False,
                       valid_fraction=split.valid.num_edges / history.num_edges,
                       train_updater=False, extra={"lr": MF["lr"]})
    train, _ = split_for_validation(history, plan.valid_fraction)
    assert train.num_edges == split.train.num_edges  # retrain at t2 validates on [t1, t2)
    served = fit_model(plan, history)  # what `streamrec retrain --cutoff t2` fits
    assert served.epochs is not None
    assert out["model_info"]["mf"]["epochs"] == served.epochs == served.metrics["best_epoch"]
    ev = evaluate_model(served.model, EvaluationTask.from_split(split, fit_on="train+valid"),
                        ks=(5, 10), n_bootstrap=20, seed=0)
    assert out["models"]["mf"] == to_json(ev.as_dict())  # the same model, scored alike
    on_train = run_evaluation(graph, ["mf"], model_kwargs={"mf": MF}, ks=(5, 10),
                              n_bootstrap=20, streaming=False, baselines=False,
                              progress=False, fit_on="train")
    assert on_train["models"]["mf"] != out["models"]["mf"]


def _events() -> list[Event]:
    """Old favourites I0..I9 (days 0-9), new favourites I10..I19 (the last 7 days)."""
    events, t = [], 1_700_000_000.0
    for day in range(20):
        for n in range(12):
            item = (n % 10) if day < 10 else 10 + (n * (day - 9)) % 10
            events.append(Event.create(f"u{n % 6}", f"I{item}", t + day * DAY + n * 60))
    return events


def test_a_cold_users_evaluated_ranking_is_what_recommend_serves(store_url: str) -> None:
    graph_store = GraphStore(store_url)
    graph_store.write_batch(_events())
    embeddings = EmbeddingStore(graph_store.engine)
    retrain(graph_store, embeddings, RetrainPlan("mf", epochs=1, dim=8, valid_fraction=0,
                                                 progress=False))
    served = QueryService(graph_store, embeddings, ann_backend="numpy").recommend("new", k=10)
    assert served["fallback"] and len(served["items"]) == 10
    snap = graph_store.snapshot()
    cold = snap.num_users  # the newcomer: no event before the test period
    history = InteractionGraph(snap.user, snap.item, snap.ts, snap.weight, cold + 1,
                               snap.num_items)
    test = InteractionGraph.from_arrays([cold], [0], [snap.ts.max() + 1.0],
                                        num_users=cold + 1, num_items=snap.num_items)
    task = EvaluationTask.from_periods(history, test)
    assert task.cold.tolist() == [True]
    model = make_model("mf", epochs=1, embedding_dim=8, progress=False).fit(history)
    top = rank_users(model, task, 0, 1, 10)[0].tolist()
    item_ids = graph_store.node_ids("item")
    assert [item_ids[i] for i in top] == [r["item_id"] for r in served["items"]]
    all_time = np.lexsort((np.arange(snap.num_items), -np.bincount(snap.item)))[:10]
    assert top != all_time.tolist()  # not the all-time counts the report used to force
    graph_store.engine.dispose()


def test_incremental_runs_the_updater_weights_the_retrain_trained() -> None:
    graph = _stream(n=1200)
    out = run_evaluation(graph, ["mf"], model_kwargs={"mf": MF}, ks=(5,), n_bootstrap=10,
                         baselines=False, progress=False, max_windows=1)
    assert out["streaming"]["approach_info"]["mf (+incremental)"]["updater"] == "trained"
    assert out["model_info"]["mf"]["updater"] == "trained"
    split = temporal_split(graph)
    history = split.history("train+valid")
    model = make_model("mf", **MF).fit(history)
    trained = TemporalUpdater(8, seed=3)
    with torch.no_grad():
        next(trained.parameters()).add_(1.0)
    approach = IncrementalApproach(model, trained_on=history, updater=trained.to_bytes())
    used = approach._inc.updater.state_dict()
    assert approach.trained and all(torch.equal(v, trained.state_dict()[k])
                                    for k, v in used.items())


def _random_graph(seed: int) -> InteractionGraph:
    rng = np.random.default_rng(seed)
    n = 500
    ts = np.sort(rng.uniform(0, 40 * DAY, n))
    item = np.minimum(rng.zipf(1.4, n) - 1, 29) ^ (ts > 25 * DAY).astype(np.int64) * 7
    return InteractionGraph.from_arrays(rng.integers(0, 25, n), np.minimum(item, 29), ts,
                                        num_users=30, num_items=30)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), test_seed=st.integers(0, 10_000),
       n_test=st.integers(1, 200))
def test_the_tuned_windows_never_see_the_test_period(seed: int, test_seed: int,
                                                     n_test: int) -> None:
    graph = _random_graph(seed)
    t1, t2 = 30 * DAY, 34 * DAY
    before = graph.before(t2)
    rng = np.random.default_rng(test_seed)  # any other test period: items, users, sizes
    # user 29 has no history, so its test event is unseen and the period can be evaluated
    # (a draw of only seen pairs raised "nothing to evaluate")
    other = InteractionGraph.from_arrays(
        np.r_[before.user, rng.integers(0, 30, n_test), 29],
        np.r_[before.item, rng.integers(0, 30, n_test), rng.integers(0, 30)],
        np.r_[before.ts, np.sort(rng.uniform(t2, 40 * DAY, n_test)), 40 * DAY],
        num_users=30, num_items=30)

    def chosen(g: InteractionGraph) -> dict:
        out = run_evaluation(g, [], t1=t1, t2=t2, ks=(5,), n_bootstrap=5, streaming=False,
                             progress=False)
        return {name: {k: v for k, v in info.items() if k in (
            "window_days", "half_life_days", "valid_scores")}
            for name, info in out["model_info"].items()}

    choice = chosen(graph)
    assert choice["pop-recent"]["window_days"] in (1, 2, 3, 7, 14, 28)
    assert choice["pop-decayed"]["half_life_days"] in (0.5, 1, 2, 3, 7, 14, 30)
    assert chosen(other) == choice


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 12))
def test_the_fast_validation_recall_equals_evaluate_model(seed: int, k: int) -> None:
    graph = _random_graph(seed)
    task = EvaluationTask.from_periods(graph.before(30 * DAY), graph.subset(
        graph.ts >= 30 * DAY))
    model = TrendingPopularity("decayed", 2.0).fit(graph.before(30 * DAY))
    slow = evaluate_model(model, task, ks=(k,), n_bootstrap=1, slices=False)
    fast = list_recall(model.item_embeddings()[:, 0].numpy(), task, k)
    assert fast == pytest.approx(slow.metrics[f"recall@{k}"], abs=1e-12)


def test_a_validation_period_without_warm_users_fits_like_a_retrain_without_one() -> None:
    graph = _stream(n=600)
    t1, t2 = 1.6e9 + 400 * 600.0, 1.6e9 + 500 * 600.0
    cold = (graph.ts >= t1) & (graph.ts < t2)  # validation: only users never seen before
    user = np.where(cold, 40 + np.arange(graph.num_edges) % 5, graph.user)
    g = InteractionGraph.from_arrays(user, graph.item, graph.ts, num_users=45,
                                     num_items=graph.num_items)
    out = run_evaluation(g, ["mf"], model_kwargs={"mf": MF}, t1=t1, t2=t2, ks=(5,),
                         n_bootstrap=10, streaming=False, progress=False)
    assert out["model_info"]["mf"]["epochs"] is None  # nothing chosen: the model's own
    assert out["model_info"]["mf"]["hyper_parameters"]["epochs"] == MF["epochs"]
