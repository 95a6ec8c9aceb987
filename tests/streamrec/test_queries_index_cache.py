"""QueryService with a shared IndexCache: the second process reads the first one's HNSW index
back and answers exactly as it does; when too many items moved, one rebuilds and the others
read the rebuilt index (SQLite file and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from store.ann_cache import IndexCache
from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.events import Event
from streamrec.api import default_index_cache, publish_index
from streamrec.queries import QueryService

T0 = 1_700_000_000.0
D = 8
ITEMS = 300
OPTIONS = {"exact_threshold": 100}  # HNSW from 100 items on


@pytest.fixture
def stores(store_url: str):  # type: ignore[no-untyped-def]
    graph = GraphStore(store_url)
    graph.write_batch([Event.create(f"u{u}", f"i{(u * 37 + j) % ITEMS}", T0 + 60 * (u * 8 + j))
                       for u in range(40) for j in range(8)]
                      + [Event.create("u0", f"i{i}", T0 + 1e5 + i) for i in range(ITEMS)])
    embeddings = EmbeddingStore(graph.engine)
    rng = np.random.default_rng(0)
    version = embeddings.create_version(
        "mf", T0 + 2e5, rng.standard_normal((40, D)).astype(np.float32),
        rng.standard_normal((ITEMS, D)).astype(np.float32), hyper_parameters={}, metrics={})
    embeddings.activate(version)
    yield graph, embeddings, version
    graph.engine.dispose()


def _service(stores, cache_dir: Path) -> tuple[QueryService, IndexCache]:  # type: ignore[no-untyped-def]
    graph, embeddings, _ = stores
    cache = IndexCache(cache_dir)  # one per process: each test service stands for a worker
    return QueryService(graph, embeddings, ann_options=OPTIONS, index_cache=cache), cache


def _answers(service: QueryService) -> list[dict]:
    return ([service.recommend(f"u{u}", k=10) for u in range(0, 40, 3)]
            + [service.similar(f"i{i}", k=10) for i in range(0, ITEMS, 29)])


def test_a_worker_reading_the_shared_index_answers_as_its_builder(  # type: ignore[no-untyped-def]
        stores, tmp_path: Path) -> None:
    first, first_cache = _service(stores, tmp_path)
    first.refresh()
    second, second_cache = _service(stores, tmp_path)
    second.refresh()
    assert first.served.index.kind == second.served.index.kind == "hnsw"
    assert (first_cache.builds, second_cache.builds, second_cache.loads) == (1, 0, 1)
    assert _answers(second) == _answers(first)  # scores too: the same graph, same vectors
    graph, embeddings, _ = stores
    fresh = QueryService(graph, embeddings, ann_options=OPTIONS)  # builds its own, no cache
    fresh.refresh()
    ids = [[r["item_id"] for r in a["items"]] for a in _answers(fresh)]
    assert [[r["item_id"] for r in a["items"]] for a in _answers(second)] == ids


def test_a_rebuild_after_items_moved_is_shared_too(stores, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, embeddings, version = stores
    first, first_cache = _service(stores, tmp_path)
    second, second_cache = _service(stores, tmp_path)
    first.refresh()
    second.refresh()
    moved = np.arange(0, ITEMS, 10)  # 10% of the items
    embeddings.write_overlay(version, "item", moved,
                             np.random.default_rng(1).standard_normal((len(moved), D)),
                             T0 + 3e5)
    assert first.refresh_overlay() and second.refresh_overlay()
    assert first.index_fresh_share == second.index_fresh_share == pytest.approx(0.1)
    first.refresh()  # the Refresher's rebuild: 10% is past the reuse share, so it builds
    second.refresh()
    assert (first_cache.builds, second_cache.builds, second_cache.loads) == (2, 0, 2)
    assert first.index_fresh_share == second.index_fresh_share == 0.0
    assert _answers(second) == _answers(first)


def test_a_worker_behind_the_shared_index_serves_its_own_snapshot(  # type: ignore[no-untyped-def]
        stores, tmp_path: Path) -> None:
    _, embeddings, version = stores
    first, _ = _service(stores, tmp_path)
    first.refresh()
    # 2 items move after the index was published, to where they beat every other item for
    # u1: read back, the index scores them exactly with their new vectors
    user = first.served.snapshot.users[first.served.user_index["u1"]]
    embeddings.write_overlay(version, "item", np.array([5, 6]), np.stack([10 * user] * 2),
                             T0 + 3e5)
    second, cache = _service(stores, tmp_path)
    second.refresh()
    assert (cache.builds, cache.loads) == (0, 1)
    assert second.index_fresh_share == pytest.approx(2 / ITEMS)
    top = second.recommend("u1", k=2, exclude_seen=False)["items"]
    assert {r["item_id"] for r in top} == {"i5", "i6"}
    assert first.recommend("u1", k=2, exclude_seen=False)["items"] != top  # its old snapshot


@pytest.mark.parametrize(("url", "want"), [
    ("sqlite:////srv/rec/streamrec.db", "/srv/rec/index-cache"),
    ("sqlite:///./var/streamrec.db", "./var/index-cache"),
    ("sqlite://", None),  # in memory: one process, nothing to share
    ("sqlite:///:memory:", None),
    ("postgresql+psycopg://db/rec", "./var/index-cache"),
])
def test_serve_keeps_the_index_cache_beside_a_sqlite_store(url: str, want: str | None) -> None:
    assert default_index_cache(url) == want


def test_serve_publishes_the_index_before_its_workers_start(  # type: ignore[no-untyped-def]
        stores, tmp_path: Path) -> None:
    graph, embeddings, _ = stores
    publish_index(graph, embeddings, IndexCache(tmp_path), **OPTIONS)
    worker, cache = _service(stores, tmp_path)
    worker.refresh()
    assert worker.served.index.kind == "hnsw" and (cache.builds, cache.loads) == (0, 1)
