"""Neighbour buffers published with a version (store/version_buffers.py), both stores."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import inspect

from store import embedding_schema as es
from store import version_buffers
from store.embeddings import EmbeddingStore


@pytest.fixture
def store(store_url: str) -> Iterator[EmbeddingStore]:
    s = EmbeddingStore(store_url)
    yield s
    s.engine.dispose()


def _version(store: EmbeddingStore, buffers: bytes | None) -> int:
    return store.create_version("mf", 100.0, np.ones((3, 4)), np.ones((5, 4)),
                                hyper_parameters={}, metrics={}, neighbour_buffers=buffers)


def test_buffers_round_trip_in_parts(store: EmbeddingStore,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = np.random.default_rng(0).bytes(10_000) + b"\x00" * 7
    monkeypatch.setattr(version_buffers, "PART_BYTES", 4096)  # 3 parts
    vid = _version(store, data)
    assert store.neighbour_buffers(vid) == data
    with store.engine.connect() as conn:
        parts = conn.execute(es.embedding_buffers.select()).all()
    assert sorted(p.part for p in parts) == [0, 1, 2]
    empty = _version(store, b"")
    assert store.neighbour_buffers(empty) == b""
    assert store.neighbour_buffers(_version(store, None)) is None
    with pytest.raises(TypeError, match="neighbour_buffers must be bytes"):
        _version(store, "text")  # type: ignore[arg-type]


def test_pruned_and_failed_versions_lose_their_buffers(store: EmbeddingStore) -> None:
    old, failed, new = (_version(store, f"buffers {n}".encode()) for n in range(3))
    store.activate(old)
    store.mark_failed(failed, "test")
    store.activate(new, keep=1)  # old is retired and pruned
    assert store.neighbour_buffers(new) == b"buffers 2"
    assert store.neighbour_buffers(old) is None and store.neighbour_buffers(failed) is None


def test_a_store_from_before_the_table_gains_it(store_url: str) -> None:
    first = EmbeddingStore(store_url)
    vid = _version(first, None)
    es.embedding_buffers.drop(first.engine)  # the tables as an older streamrec left them
    assert "embedding_buffers" not in inspect(first.engine).get_table_names()
    first.engine.dispose()
    again = EmbeddingStore(store_url)
    try:
        assert again.neighbour_buffers(vid) is None
        assert again.neighbour_buffers(_version(again, b"new")) == b"new"
    finally:
        again.engine.dispose()
