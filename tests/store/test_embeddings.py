"""Embedding store on SQLite and PostgreSQL: versions, atomic activation, overlay, pruning."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import func, select

from store import embedding_schema as es
from store.embeddings import EmbeddingStore

NU, NI, D = 6, 8, 4


def _full(n: int, value: float, d: int = D) -> np.ndarray:
    return np.full((n, d), value, np.float32)


@pytest.fixture
def store(store_url: str) -> Iterator[EmbeddingStore]:
    s = EmbeddingStore(store_url)
    yield s
    s.engine.dispose()


def _version(store: EmbeddingStore, value: float, *, cutoff: float = 100.0) -> int:
    return store.create_version(
        "mf", cutoff, _full(NU, value), _full(NI, value), hyper_parameters={}, metrics={}
    )


def _vector_rows(store: EmbeddingStore, version_id: int) -> int:
    v = es.embedding_vectors
    stmt = select(func.count()).where(v.c.version_id == version_id)
    with store.engine.connect() as conn:
        return conn.execute(stmt).scalar_one()


def test_version_round_trip(store: EmbeddingStore) -> None:
    rng = np.random.default_rng(0)
    users = rng.standard_normal((NU, D)).astype(np.float32)
    items = rng.standard_normal((NI, D))  # float64 in, float32 stored
    assert store.active_version() is None
    with pytest.raises(es.NoActiveVersionError, match="no embedding version is active"):
        store.load()
    vid = store.create_version(
        "lightgcn",
        123.5,
        users,
        items,
        hyper_parameters={"dim": np.int64(D), "lr": 0.01},
        metrics={"recall@20": np.float32(0.25)},
        updater_state=b"\x00weights",
    )
    info = store.get_version(vid)
    assert (info.name, info.model, info.cutoff, info.status) == (
        f"v{vid}",
        "lightgcn",
        123.5,
        "ready",
    )
    assert (info.dim, info.num_users, info.num_items) == (D, NU, NI)
    assert info.hyper_parameters == {"dim": D, "lr": 0.01}
    assert info.metrics == {"recall@20": 0.25}
    assert info.has_updater_state and info.activated_at is None and not info.pruned
    assert store.active_version() is None  # creating never activates
    store.activate(vid)
    active = store.active_version()
    assert active is not None and active.id == vid and active.status == "active"
    assert active.activated_at is not None
    snap = store.load(include_updater_state=True)
    np.testing.assert_array_equal(snap.users, users)
    np.testing.assert_array_equal(snap.items, items.astype(np.float32))
    assert snap.users.dtype == np.float32 and snap.updater_state == b"\x00weights"
    assert store.updater_state(vid) == b"\x00weights"
    assert store.load().updater_state is None

    second = _version(store, 2.0)
    assert [v.id for v in store.versions()] == [second, vid]
    store.activate(second)
    assert store.get_version(vid).status == "retired"
    store.activate(np.int64(vid))  # a rollback (numpy ids work too)
    assert store.active_version().id == vid and store.get_version(second).status == "retired"
    with pytest.raises(es.UnknownVersionError, match="v999"):
        store.activate(999)


def test_bad_input_writes_nothing(store: EmbeddingStore) -> None:
    bad = _full(NU, 1.0)
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        store.create_version("mf", 1.0, bad, _full(NI, 1.0), hyper_parameters={}, metrics={})
    with pytest.raises(ValueError, match="dim"):
        store.create_version(
            "mf", 1.0, _full(NU, 1), _full(NI, 1, d=3), hyper_parameters={}, metrics={}
        )
    assert store.versions() == []


def test_failed_create_keeps_previous_version_serving(
    store: EmbeddingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = _version(store, 1.0)
    store.activate(good)
    real = store._insert_vector_rows
    calls = []

    def fail_on_items(conn, rows):  # type: ignore[no-untyped-def]
        calls.append(rows[0][1])
        if rows[0][1] == "item":
            raise OSError("disk full")
        real(conn, rows)

    monkeypatch.setattr(store, "_insert_vector_rows", fail_on_items)
    with pytest.raises(OSError, match="disk full"):
        _version(store, 2.0)
    assert calls == ["user", "item"]  # the user vectors were written before the failure
    failed = store.versions()[0]
    assert failed.status == "failed" and "disk full" in failed.metrics["failure"]
    assert _vector_rows(store, failed.id) == 0  # its partial vectors are gone
    assert store.active_version().id == good
    assert (store.load().users == 1.0).all()
    with pytest.raises(es.VersionStateError, match="cannot be activated"):
        store.activate(failed.id)
    with pytest.raises(es.VersionStateError, match="is active"):
        store.mark_failed(good, "bad metrics")


def test_activation_is_atomic_under_a_concurrent_reader(store: EmbeddingStore) -> None:
    store.activate(_version(store, 1.0))
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                snap = store.load()
                k = snap.version.id
                assert (snap.users[snap.mask("user")] == k).all(), f"mixed users in v{k}"
                assert (snap.items[snap.mask("item")] == k).all(), f"mixed items in v{k}"
                seen.append(k)
            except BaseException as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for k in range(2, 12):
            assert _version(store, float(k)) == k
            store.activate(k, keep=1)  # prunes the previous version while it is being read
            store.write_overlay(k, "user", np.array([0, NU + 1]), _full(2, float(k)), 1.0)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors[0]
    assert seen and seen == sorted(seen)  # versions only move forward
    assert store.load().version.id == 11


def test_overlay_merge_semantics(store: EmbeddingStore) -> None:
    v1 = _version(store, 1.0, cutoff=100.0)
    store.activate(v1)
    store.write_overlay(v1, "user", np.array([1]), _full(1, 5.0), 150.0)
    store.write_overlay(v1, "item", np.array([NI + 2]), _full(1, 6.0), np.array([160.0]))
    snap = store.load()
    assert (snap.users[1] == 5.0).all() and (snap.users[0] == 1.0).all()
    assert (snap.source("user", 1), snap.updated_at("user", 1)) == ("overlay", 150.0)
    assert (snap.source("user", 0), snap.updated_at("user", 0)) == ("base", 100.0)
    assert snap.items.shape == (NI + 3, D) and (snap.vector("item", NI + 2) == 6.0).all()
    assert snap.mask("item").tolist() == [True] * NI + [False, False, True]
    with pytest.raises(KeyError, match="no item with idx 8"):
        snap.source("item", NI)
    assert store.overlay_size(v1) == 2
    delta = store.overlay_since(v1, 155.0)
    assert delta.idx.tolist() == [NI + 2] and delta.kind.tolist() == ["item"]

    # incremental refresh of a loaded snapshot equals a fresh load
    store.write_overlay(
        v1, "user", np.array([2, 2]), np.stack([_full(1, 7)[0], _full(1, 8)[0]]), 170
    )
    refreshed = snap.apply(store.overlay_since(v1, snap.watermark))
    np.testing.assert_array_equal(refreshed.users, store.load().users)
    assert (refreshed.users[2] == 8.0).all()  # a repeated idx keeps its last row

    v2 = _version(store, 2.0, cutoff=200.0)
    store.write_overlay(v2, "user", np.array([1, 3]), _full(2, 9.0), 210.0)
    snap = store.load()  # still v1; v2's row for user 1 did not replace v1's
    assert snap.version.id == v1 and (snap.users[1] == 5.0).all() and (snap.users[3] == 1.0).all()

    store.activate(v2)
    snap = store.load()
    assert snap.version.id == v2 and snap.source("user", 1) == "base"  # v1's row stops counting
    assert (snap.users[1] == 2.0).all() and (snap.users[3] == 9.0).all()
    assert snap.source("user", 3) == "overlay" and snap.items.shape == (NI, D)
    assert store.overlay_size(v1) == 0  # pruned with the activation
    # a late write of a stale updater neither replaces v2's rows nor counts
    store.write_overlay(v1, "user", np.array([3, 4]), _full(2, -1.0), 220.0)
    snap = store.load()
    assert (snap.users[3] == 9.0).all() and snap.source("user", 4) == "base"

    with pytest.raises(ValueError, match="dim 3"):
        store.write_overlay(v2, "user", np.array([0]), _full(1, 1.0, d=3), 1.0)
    with pytest.raises(ValueError, match="updated_at"):
        store.write_overlay(v2, "user", np.array([0]), _full(1, 1.0), np.array([1.0, 2.0]))
    with pytest.raises(es.UnknownVersionError):
        store.write_overlay(999, "user", np.array([0]), _full(1, 1.0), 1.0)
    with pytest.raises(ValueError, match="kind"):
        store.write_overlay(v2, "users", np.array([0]), _full(1, 1.0), 1.0)


def test_pruning_keeps_the_newest_versions(store: EmbeddingStore) -> None:
    ids = [_version(store, float(k)) for k in range(1, 6)]
    for vid in ids:
        store.activate(vid, keep=2)
    pending = _version(store, 6.0)  # ready, never activated: pruning leaves it alone
    store.activate(ids[-1], keep=2)
    with_vectors = [v.id for v in store.versions() if not v.pruned]
    assert with_vectors == [pending, ids[4], ids[3]]
    assert [_vector_rows(store, vid) for vid in ids] == [0, 0, 0, NU + NI, NU + NI]
    assert store.get_version(ids[0]).status == "retired"  # metadata is kept
    assert store.load(ids[3]).version.id == ids[3]
    with pytest.raises(es.VersionStateError, match="pruned"):
        store.load(ids[0])
    with pytest.raises(es.VersionStateError, match="pruned"):
        store.activate(ids[0])
    with pytest.raises(ValueError, match="keep"):
        store.activate(ids[-1], keep=0)
    store.mark_failed(pending, "offline metrics regressed")
    failed = store.get_version(pending)
    assert failed.status == "failed" and failed.metrics["failure"] == "offline metrics regressed"
