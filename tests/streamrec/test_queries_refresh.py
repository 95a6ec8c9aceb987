"""QueryService.refresh_overlay: applying new overlay rows, users and items in place answers
exactly as a full reload does (SQLite file and PostgreSQL)."""

from __future__ import annotations

import numpy as np
import pytest

from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.events import Event
from streamrec.queries import QueryService

T0 = 1_700_000_000.0
D = 8


@pytest.fixture
def stores(store_url: str):  # type: ignore[no-untyped-def]
    graph = GraphStore(store_url)
    graph.write_batch([Event.create(f"u{u}", f"i{(u * 7 + j) % 60}", T0 + 60 * (u * 5 + j))
                       for u in range(40) for j in range(5)])
    embeddings = EmbeddingStore(graph.engine)
    rng = np.random.default_rng(0)
    version = embeddings.create_version(
        "mf", T0 + 1e5, rng.standard_normal((40, D)).astype(np.float32),
        rng.standard_normal((60, D)).astype(np.float32), hyper_parameters={}, metrics={})
    embeddings.activate(version)
    yield graph, embeddings, version
    graph.engine.dispose()


def _answers(service: QueryService) -> tuple[list[object], list[float]]:
    """The answers with their scores taken out (FAISS and numpy round differently)."""
    users = [f"u{u}" for u in range(0, 41, 4)] + ["newbie"]
    items = ["i0", "i5", "i59", "fresh-item"]
    answers = ([service.recommend(u, k=12) for u in users]
               + [service.similar(i, k=12) for i in items]
               + [service.embedding("user", "newbie"), service.embedding("item", "i5")])
    scores = [r.pop("score") for a in answers for r in a.get("items", [])]
    return answers, scores


def _assert_same(got: QueryService, want: QueryService) -> None:
    (a, a_scores), (b, b_scores) = _answers(got), _answers(want)
    assert a == b
    assert a_scores == pytest.approx(b_scores, rel=1e-5, abs=1e-5)


def test_refresh_overlay_equals_a_full_reload(stores) -> None:  # type: ignore[no-untyped-def]
    graph, embeddings, version = stores
    service = QueryService(graph, embeddings, ann_backend="faiss")
    service.refresh()
    # new nodes arrive: a user, an item (both get overlay rows), moved vectors of old ones
    graph.write_batch([Event.create("newbie", "fresh-item", T0 + 2e5),
                       Event.create("u3", "fresh-item", T0 + 2e5 + 1)])
    rng = np.random.default_rng(1)
    user_idx = np.array([3, 8, 40])  # 40: newbie
    item_idx = np.array([5, 59, 60])  # 60: fresh-item
    embeddings.write_overlay_nodes(version, [
        ("user", user_idx, 5 * rng.standard_normal((3, D)), T0 + 2e5 + 1),
        ("item", item_idx, 5 * rng.standard_normal((3, D)), T0 + 2e5 + 1),
    ])
    assert service.refresh_overlay()
    assert service.index_fresh_share == pytest.approx(3 / 61)
    _assert_same(service, QueryService(graph, embeddings, ann_backend="faiss"))
    # a second round on top of the first, including a row older than the watermark
    embeddings.write_overlay(version, "user", user_idx[:1], np.ones((1, D)), T0 + 2e5 - 10)
    assert service.refresh_overlay()
    _assert_same(service, QueryService(graph, embeddings, ann_backend="faiss"))


def test_refresh_overlay_defers_a_new_version_to_refresh(stores) -> None:  # type: ignore[no-untyped-def]
    graph, embeddings, version = stores
    service = QueryService(graph, embeddings)
    assert not service.refresh_overlay()  # nothing served yet
    service.refresh()
    newer = embeddings.create_version("mf", T0 + 2e5, np.ones((40, D), np.float32),
                                      np.ones((60, D), np.float32), hyper_parameters={},
                                      metrics={})
    embeddings.activate(newer)
    assert not service.refresh_overlay()
    service.refresh()
    assert service.version == f"v{newer}"


def test_refresh_overlay_recounts_popularity_at_its_own_pace(stores) -> None:  # type: ignore[no-untyped-def]
    graph, embeddings, _ = stores
    lazy = QueryService(graph, embeddings, popular_refresh_s=3600)
    eager = QueryService(graph, embeddings, popular_refresh_s=0)
    lazy.refresh()
    eager.refresh()
    before = lazy.recommend("stranger", k=3)["items"]
    # a burst on one item makes it the most popular of the window
    graph.write_batch([Event.create(f"u{u}", "i59", T0 + 3e5 + u) for u in range(40)])
    assert lazy.refresh_overlay() and eager.refresh_overlay()
    assert lazy.recommend("stranger", k=3)["items"] == before  # counted an hour ago
    assert eager.recommend("stranger", k=3)["items"][0]["item_id"] == "i59"
