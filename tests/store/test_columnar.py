"""The columnar reads return exactly what the row-by-row reads returned, on every store."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select, text

from models.base import InteractionGraph
from store import columnar, event_log, schema
from store.graph import GraphStore
from stream.events import Event

BIG = 2**31 + 7  # interaction ids beyond a 32-bit integer


def _row_by_row(store: GraphStore, cond) -> InteractionGraph:  # type: ignore[no-untyped-def]
    """The read GraphStore._edges did before store/columnar.py, kept as the reference."""
    t = schema.interactions
    stmt = select(t.c.user_idx, t.c.item_idx, t.c.ts, t.c.weight).order_by(t.c.ts, t.c.id)
    if cond is not None:
        stmt = stmt.where(cond)
    with store.engine.connect() as conn:
        rows = conn.execute(stmt).all()
        num_users, num_items = store._node_counts(conn)
    arr = np.array(rows, dtype=np.float64).reshape(-1, 4)
    return InteractionGraph(
        arr[:, 0].astype(np.int64),
        arr[:, 1].astype(np.int64),
        arr[:, 2].copy(),
        arr[:, 3].astype(np.float32),
        num_users,
        num_items,
    )


def _same(a: InteractionGraph, b: InteractionGraph) -> None:
    for name in ("user", "item", "ts", "weight"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert (a.num_users, a.num_items) == (b.num_users, b.num_items)


@pytest.fixture
def store(store_url: str) -> GraphStore:
    """Ties in time, weights float32 cannot hold exactly, fractional times, ids past 2**31."""
    s = GraphStore(store_url)
    rng = np.random.default_rng(5)
    ts = np.round(rng.random(300) * 50, 1) + 1e9 + 1 / 3  # many ties at 0.1 s
    s.write_batch(
        [
            Event.create(
                f"u{rng.integers(30)}",
                f"i{rng.integers(40)}",
                float(t),
                weight=float(0.1 + rng.random()),
                event_id=f"e{n}",
            )
            for n, t in enumerate(ts)
        ]
    )
    with s.engine.begin() as conn:  # a jump in the ingest sequence past 2**31
        conn.execute(
            text(
                "INSERT INTO interactions (id, event_id, user_idx, item_idx, ts, event_type, "
                "weight, ingested_at) SELECT id + :big, event_id || 'b', user_idx, item_idx, "
                "ts - 7, event_type, weight * 3, ingested_at FROM interactions"
            ),
            {"big": BIG},
        )
    yield s
    s.engine.dispose()


def test_the_fast_path_is_the_one_taken(store: GraphStore) -> None:
    with store.engine.connect() as conn:
        want = "postgres-bytea" if store.dialect == "postgresql" else "sqlite-driver"
        assert columnar.path(conn) == want


def test_every_edge_read_equals_the_row_by_row_read(store: GraphStore) -> None:
    t = schema.interactions
    seq = store.ingest_seq()
    assert seq > BIG
    mid = float(np.median(store.snapshot().ts))
    cases = [
        (store.snapshot(), None),
        (store.snapshot(until=mid), t.c.ts <= mid),
        (store.snapshot(seq=BIG), t.c.id <= BIG),
        (store.snapshot(until=mid, seq=BIG + 50), (t.c.ts <= mid) & (t.c.id <= BIG + 50)),
        (store.snapshot_seen(until=mid)[0], (t.c.ts <= mid) & (t.c.id <= seq)),
        (store.edges_between(mid - 10, mid), (t.c.ts > mid - 10) & (t.c.ts <= mid)),
        (store.snapshot(until=0.0), t.c.ts <= 0.0),  # empty
        (store.edges_between(mid, mid), (t.c.ts > mid) & (t.c.ts <= mid)),  # empty
    ]
    for got, cond in cases:
        _same(got, _row_by_row(store, cond))
        _same(got, store._edges(cond, fast=False))
    assert store.snapshot().num_edges == 600 and store.snapshot(until=0.0).num_edges == 0


def test_unseen_events_equal_the_row_by_row_read(store: GraphStore) -> None:
    mid = float(np.median(store.snapshot().ts))
    t = schema.interactions
    with store.engine.connect() as conn:
        upto = event_log.ingest_seq(conn)
        for seq, cutoff in ((BIG, mid), (None, mid), (upto, 2e9), (10, 0.0)):
            got = event_log.unseen_by(conn, seq, cutoff, upto=upto)
            cond = t.c.ts > cutoff if seq is None else (t.c.id > seq) | (t.c.ts > cutoff)
            want = columnar.read(conn, cond & (t.c.id <= upto), "id", fast=False)
            np.testing.assert_array_equal(got.seq, want["id"])
            assert got.seq.dtype == np.int64 and got.weight.dtype == np.float32
            np.testing.assert_array_equal(got.ts, want["ts"])
            np.testing.assert_array_equal(got.weight, want["weight"].astype(np.float32))
            np.testing.assert_array_equal(got.user, want["user_idx"])
            np.testing.assert_array_equal(got.item, want["item_idx"])
        assert event_log.unseen_by(conn, upto, 2e9, upto=upto).num_events == 0
        assert event_log.unseen_by(conn, 10, 0.0, upto=upto).seq.max() == upto


def test_postgres_pages_follow_the_order_across_ties(
    store: GraphStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    if store.dialect != "postgresql":
        pytest.skip("paging is the PostgreSQL reader's")
    whole = store.snapshot()
    monkeypatch.setattr(columnar, "PG_PAGE_ROWS", 7)  # 600 rows: 86 pages, ties cut across
    _same(store.snapshot(), whole)
    with store.engine.connect() as conn:
        by_id = columnar.read(conn, None, "id")
    assert np.all(np.diff(by_id["id"]) > 0) and len(by_id["id"]) == 600


def test_the_largest_node_indices_survive_the_packed_pair(store_url: str) -> None:
    store = GraphStore(store_url)
    top = 2**31 - 1  # users.idx and items.idx are 32-bit integers
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO interactions (id, event_id, user_idx, item_idx, ts, event_type, "
                "weight, ingested_at) VALUES (:id, 'a', :u, :i, 1.5, 'x', 0.1, 0), "
                "(:id2, 'b', 0, :u, -2.25, 'x', 1e-300, 0)"
            ),
            {"id": BIG, "id2": 2**62, "u": top, "i": top - 1},
        )
    with store.engine.connect() as conn:
        for order in ("time", "id"):
            got = columnar.read(conn, None, order)
            want = columnar.read(conn, None, order, fast=False)
            assert got.keys() == want.keys()
            for name in got:
                assert got[name].dtype == want[name].dtype
                np.testing.assert_array_equal(got[name], want[name])
        assert columnar.read(conn, None, "id")["user_idx"].tolist() == [top, 0]
        assert columnar.read(conn, None, "id")["id"].tolist() == [BIG, 2**62]
        assert "id" not in columnar.read(conn, None, ids=False)
    store.engine.dispose()
