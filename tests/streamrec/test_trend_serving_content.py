"""Item content end to end (SQLite file and PostgreSQL): metadata imported into the store
reaches the retrained ranker, the served ranking equals its exact scores, and an item first
stored after the retrain gets its tags before its first event moves anyone's affinity."""

from __future__ import annotations

import numpy as np
import torch

from models.trend import TrendRanker
from models.trend.serving import from_bytes
from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from store.item_metadata import ItemMetadata
from stream.events import Event
from stream.item_metadata import ItemRecord
from streamrec.queries import QueryService
from streamrec.retrain import RetrainPlan, retrain

T0 = 1_700_000_000.0
DAY = 86_400.0


def genre_events(n: int = 6000, users: int = 120, items: int = 60) -> list[Event]:
    """Users keep to one of two genres nine times in ten, over a Zipf popularity."""
    rng = np.random.default_rng(0)
    taste = rng.integers(0, 2, users)
    user = rng.integers(0, users, n)
    rank = rng.zipf(1.6, n) % (items // 2)
    genre = np.where(rng.random(n) < 0.9, taste[user], 1 - taste[user])
    ts = np.sort(rng.uniform(T0, T0 + 60 * DAY, n))
    return [Event.create(f"u{u}", f"g{g}-{r}", float(t))
            for u, g, r, t in zip(user, genre, rank, ts, strict=True)]


def exact_top(graph: GraphStore, embeddings: EmbeddingStore, version_id: int, user: str,
              k: int) -> list[str]:
    """The published ranker after every stored event (content extended from the store),
    ranked by full scoring."""
    state, params = from_bytes(embeddings.ranker_state(version_id))
    info = embeddings.get_version(version_id)
    state.affinity.content = ItemMetadata(graph).extend(state.affinity.content)
    unseen = graph.events_unseen_by(info.ingest_seq, info.cutoff)
    state.update(unseen.user, unseen.item, unseen.ts)
    ranker = TrendRanker(None)
    ranker.params_, ranker.state_ = params, state
    idx = graph.node_index("user", [user])[user]
    row = ranker.score(torch.tensor([idx])).double().numpy()[0]
    row[graph.items_seen(idx)] = -np.inf
    items = graph.node_ids("item")
    return [items[i] for i in np.lexsort((np.arange(len(row)), -row))[:k]]


def test_imported_content_is_fitted_served_and_extended(store_url: str) -> None:
    graph = GraphStore(store_url)
    try:
        graph.write_batch(genre_events())
        meta = ItemMetadata(graph)
        meta.write([ItemRecord(f"g{g}-{r}", 2000 + r % 5, (f"genre{g}",))
                    for g in (0, 1) for r in range(30)]
                   + [ItemRecord("g0-new", 2023, ("genre0",))])   # no event yet
        embeddings = EmbeddingStore(graph.engine)
        info = retrain(graph, embeddings, RetrainPlan(model="trend", extra={"base": None},
                                                      progress=False, train_updater=False))
        assert info.hyper_parameters["content"] == {"items": 60, "tags": 2}
        assert info.hyper_parameters["fitted"]["tag_weight"] > 0   # chosen on validation
        service = QueryService(graph, embeddings, ann_backend="numpy")
        for user in ("u0", "u1", "u7"):
            got = [r["item_id"] for r in service.recommend(user, k=8)["items"]]
            assert got == exact_top(graph, embeddings, info.id, user, 8)
        # the new item's first event, by a genre-0 user: its content comes from the store
        fan = next(f"u{u}" for u in range(120) if exact_top(
            graph, embeddings, info.id, f"u{u}", 1)[0].startswith("g0"))
        graph.write_batch([Event.create(fan, "g0-new", T0 + 61 * DAY)])
        assert service.refresh_overlay()
        content = service.served.ranker.top.state.affinity.content
        assert content.num_items == 61 and content.tag_weights[60].toarray().tolist() == [
            [1.0, 0.0]] and content.years[60] == 2023
        for user in ("u0", fan):
            got = [r["item_id"] for r in service.recommend(user, k=8)["items"]]
            assert got == exact_top(graph, embeddings, info.id, user, 8)
    finally:
        graph.engine.dispose()
