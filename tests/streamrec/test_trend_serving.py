"""The served trend ranker: retrain publishes it with the version, recommend ranks with it
exactly as the fitted ranker scores, and every event committed afterwards (late ones too)
moves the ranking without a retrain (SQLite file and PostgreSQL)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.trend.serving import from_bytes
from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.events import Event
from streamrec.queries import QueryService
from streamrec.retrain import RetrainPlan, retrain

T0 = 1_700_000_000.0
DAY = 86_400.0


def chain_events(n_users: int = 60) -> list[Event]:
    """Users walk item chains c0-c1-c2-c3 (three chains), one step a day; 'hot' trends."""
    rng = np.random.default_rng(0)
    out = []
    for u in range(n_users):
        chain, start = int(rng.integers(0, 3)), T0 + float(rng.uniform(0, 20 * DAY))
        out += [Event.create(f"u{u}", f"c{chain}-{s}", start + s * DAY) for s in range(4)]
        if u % 3 == 0:
            out.append(Event.create(f"u{u}", "hot", T0 + 24 * DAY + u * 60.0))
    return out


@pytest.fixture
def served(store_url: str):  # type: ignore[no-untyped-def]
    graph = GraphStore(store_url)
    graph.write_batch(chain_events())
    embeddings = EmbeddingStore(graph.engine)
    info = retrain(graph, embeddings, RetrainPlan(model="trend", extra={"base": None},
                                                  progress=False, train_updater=False))
    yield graph, embeddings, info
    graph.engine.dispose()


def exact_top(graph: GraphStore, embeddings: EmbeddingStore, version_id: int, user: str,
              k: int) -> list[str]:
    """The top-k of the published ranker after every stored event, by full scoring."""
    from models.trend import TrendRanker

    state, params = from_bytes(embeddings.ranker_state(version_id))
    info = embeddings.get_version(version_id)
    unseen = graph.events_unseen_by(info.ingest_seq, info.cutoff)
    state.update(unseen.user, unseen.item, unseen.ts)
    ranker = TrendRanker(None)
    ranker.params_, ranker.state_ = params, state
    items = graph.node_ids("item")
    idx = graph.node_index("user", [user]).get(user)
    row = ranker.score(torch.tensor([idx if idx is not None else 10**6])).double().numpy()[0]
    if idx is not None:
        row[graph.items_seen(idx)] = -np.inf
    order = np.lexsort((np.arange(len(row)), -row))[:k]
    return [items[i] for i in order]


def test_retrain_publishes_the_ranker_and_recommend_ranks_with_it(served) -> None:  # type: ignore[no-untyped-def]
    graph, embeddings, info = served
    assert info.has_ranker_state and info.hyper_parameters["fitted"]["short_half_life_days"]
    assert info.hyper_parameters["base"] is None    # extra={"base": None} reached the ranker
    service = QueryService(graph, embeddings, ann_backend="numpy")
    for user in ("u1", "u2", "u30", "nobody"):
        got = service.recommend(user, k=5)
        assert [r["item_id"] for r in got["items"]] == exact_top(graph, embeddings, info.id,
                                                                  user, 5)
        assert got["fallback"] is (user == "nobody")
        seen = set() if user == "nobody" else {
            graph.node_ids("item")[i] for i in graph.items_seen(graph.node_index(
                "user", [user])[user])}
        assert not seen & {r["item_id"] for r in got["items"]}
    # a user without events gets the trend alone: the hot item first
    assert service.recommend("nobody", k=1)["items"][0]["item_id"] == "hot"


def test_events_after_the_retrain_move_the_ranking_without_one(served) -> None:  # type: ignore[no-untyped-def]
    graph, embeddings, info = served
    service = QueryService(graph, embeddings, ann_backend="numpy")
    before = service.recommend("newcomer", k=5)
    assert before["fallback"]
    # a late event (its time before the base's cutoff) committed after the snapshot
    graph.write_batch([Event.create("newcomer", "c1-1", info.cutoff - 5 * DAY)])
    assert service.refresh_overlay()
    after = service.recommend("newcomer", k=5)
    assert not after["fallback"] and "c1-1" not in {r["item_id"] for r in after["items"]}
    assert [r["item_id"] for r in after["items"]] == exact_top(graph, embeddings, info.id,
                                                                "newcomer", 5)
    # a reload of the same version (an index rebuild) keeps the ranker, caught up
    ranker = service.served.ranker
    service.refresh()
    assert service.served.ranker is ranker
    assert service.recommend("newcomer", k=5) == after
    # and a reload from scratch serves the same ranking
    again = QueryService(graph, embeddings, ann_backend="numpy").recommend("newcomer", k=5)
    assert [r["item_id"] for r in again["items"]] == [r["item_id"] for r in after["items"]]
    assert [r["score"] for r in again["items"]] == pytest.approx(
        [r["score"] for r in after["items"]], rel=1e-9)


def test_a_cold_users_served_ranking_is_the_evaluated_one(served) -> None:  # type: ignore[no-untyped-def]
    from models.trend import TrendRanker

    graph, embeddings, info = served
    state, params = from_bytes(embeddings.ranker_state(info.id))
    ranker = TrendRanker(None)
    ranker.params_, ranker.state_ = params, state
    history = graph.snapshot()
    cold = ranker.cold_scores(history).double().numpy()     # what evaluate ranks them by
    want = [graph.node_ids("item")[i] for i in np.lexsort((np.arange(len(cold)), -cold))[:6]]
    got = QueryService(graph, embeddings, ann_backend="numpy").recommend("someone-new", k=6)
    assert [r["item_id"] for r in got["items"]] == want
