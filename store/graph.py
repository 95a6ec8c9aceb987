"""The timestamped graph store: events in (one transaction per batch), time-sliced edges out.

Writes are idempotent: an event whose ``event_id`` is already stored is counted as a
duplicate and not stored again, so at-least-once delivery becomes exactly-once in effect.
Reads return numpy arrays of dense indices (a :class:`models.InteractionGraph`) ready for
torch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Connection, Engine, Table, func, select, text
from sqlalchemy.dialects import postgresql, sqlite

from models.base import InteractionGraph
from store import bulk, columnar, event_log, schema
from store.engine import DEFAULT_STORE_URL, make_engine
from stream.events import Event

_IN_CHUNK = 2000  # bound on bind parameters per IN (...) lookup, far below every DB's limit
# PostgreSQL advisory lock serialising dense-index assignment and, held until the commit,
# the assignment of interaction ids: ids grow in commit order (see store/event_log.py)
_NODE_LOCK_KEY = 0x5EED_0001


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not become an event, kept with where it came from and why."""

    raw: bytes | None
    error: str
    topic: str
    partition: int
    offset: int


@dataclass
class WriteResult:
    """What one :meth:`GraphStore.write_batch` call stored.

    ``user``, ``item``, ``ts`` and ``weight`` describe only the newly stored events (not the
    duplicates), so downstream updates count each event once.
    """

    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    new_users: int = 0
    new_items: int = 0
    user: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    item: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    ts: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    weight: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))


class GraphStore:
    """Users, items and interactions in SQL (SQLite by default, PostgreSQL by URL).

    >>> store = GraphStore("sqlite://")
    >>> r = store.write_batch([Event.create("u1", "i1", 10), Event.create("u1", "i2", 20)])
    >>> r.stored, store.write_batch([Event.create("u1", "i1", 10)]).duplicates
    (2, 1)
    >>> store.snapshot(until=15).item.tolist()
    [0]
    """

    def __init__(self, url_or_engine: str | Engine = DEFAULT_STORE_URL) -> None:
        self.engine = (
            make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        )
        self._writer = self.engine.execution_options(write_lock=True)
        # one snapshot per multi-statement read (a SQLite read transaction is one already)
        self._reader = (
            self.engine.execution_options(isolation_level="REPEATABLE READ")
            if self.engine.dialect.name == "postgresql" else self.engine
        )
        schema.metadata.create_all(self.engine)
        # external id -> dense index, only ever filled from committed rows
        self._index_cache: dict[str, dict[str, int]] = {"users": {}, "items": {}}

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def __repr__(self) -> str:
        return f"GraphStore({self.engine.url.render_as_string(hide_password=True)!r})"

    # ------------------------------------------------------------------ writes
    def write_batch(
        self,
        events: Sequence[Event],
        dead_letters: Sequence[DeadLetter] = (),
        *,
        offsets: Sequence[tuple[int, int]] | None = None,
    ) -> WriteResult:
        """Store a batch in one transaction; already-stored events count as duplicates.

        Args:
            events: validated events, any order.
            dead_letters: rejected messages to keep; a redelivered one is kept once.
            offsets: optional ``(partition, offset)`` per event, for audit.

        Raises:
            sqlalchemy.exc.DBAPIError: the database failed; nothing of the batch is stored.
        """
        now = time.time()
        unique: dict[str, int] = {}
        for pos, ev in enumerate(events):
            unique.setdefault(ev.event_id, pos)
        batch = [events[pos] for pos in unique.values()]
        sources = [offsets[pos] for pos in unique.values()] if offsets else None
        result = WriteResult(duplicates=len(events) - len(batch))
        new_nodes: dict[str, dict[str, int]] = {}
        with self._writer.begin() as conn:
            if batch:
                if self.dialect == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _NODE_LOCK_KEY})
                user_idx, new_nodes["users"] = self._resolve(conn, schema.users, batch, "user_id")
                item_idx, new_nodes["items"] = self._resolve(conn, schema.items, batch, "item_id")
                rows = [
                    (ev.event_id, user_idx[ev.user_id], item_idx[ev.item_id], ev.ts,
                     ev.event_type, ev.weight, now,
                     sources[n][0] if sources else None, sources[n][1] if sources else None)
                    for n, ev in enumerate(batch)
                ]
                stored_ids = self._insert_interactions(conn, rows)
                kept = [row for row in rows if row[0] in stored_ids]
                result.stored = len(kept)
                result.duplicates += len(rows) - len(kept)
                result.user = np.fromiter((r[1] for r in kept), np.int64, len(kept))
                result.item = np.fromiter((r[2] for r in kept), np.int64, len(kept))
                result.ts = np.fromiter((r[3] for r in kept), np.float64, len(kept))
                result.weight = np.fromiter((r[5] for r in kept), np.float32, len(kept))
            if dead_letters:
                stmt = self._insert(schema.dead_letters).on_conflict_do_nothing(
                    index_elements=["topic", "kafka_partition", "kafka_offset"]
                )
                conn.execute(
                    stmt,
                    [
                        {
                            "raw": d.raw,
                            "error": storable_text(d.error),
                            "topic": d.topic,
                            "kafka_partition": d.partition,
                            "kafka_offset": d.offset,
                            "created_at": now,
                        }
                        for d in dead_letters
                    ],
                )
                result.dead_letters = len(dead_letters)
        # only now, after the commit, may the cache learn the new indices
        for table, assigned in new_nodes.items():
            self._index_cache[table].update(assigned)
        result.new_users = len(new_nodes.get("users", {}))
        result.new_items = len(new_nodes.get("items", {}))
        return result

    def _insert_interactions(self, conn, rows: list[tuple[object, ...]]) -> set[str]:  # type: ignore[no-untyped-def]
        """Insert rows (tuples in :data:`store.bulk.INTERACTION_COLUMNS` order), skipping
        stored event ids; returns the ids actually inserted."""
        if self.dialect in ("postgresql", "sqlite"):
            return bulk.insert_interactions(conn, rows)
        stmt = self._insert(schema.interactions).on_conflict_do_nothing(
            index_elements=["event_id"]
        )
        dicts = [dict(zip(bulk.INTERACTION_COLUMNS, row, strict=True)) for row in rows]
        return {r[0] for r in conn.execute(stmt.returning(schema.interactions.c.event_id), dicts)}

    def _insert(self, table: Table):  # type: ignore[no-untyped-def]
        dialect = postgresql if self.dialect == "postgresql" else sqlite
        return dialect.insert(table)

    def _resolve(
        self, conn, table: Table, batch: Sequence[Event], attr: str
    ) -> tuple[dict[str, int], dict[str, int]]:  # type: ignore[no-untyped-def]
        """Dense index of every id in ``batch``; new ids get max(idx)+1, ... in order."""
        cache = self._index_cache[table.name]
        first_ts: dict[str, float] = {}
        for ev in batch:
            key = getattr(ev, attr)
            if key not in cache and (key not in first_ts or ev.ts < first_ts[key]):
                first_ts[key] = ev.ts
        known = {key: cache[key] for key in {getattr(ev, attr) for ev in batch} if key in cache}
        found = self._lookup(conn, table, list(first_ts))
        known.update(found)
        missing = [key for key in first_ts if key not in found]
        assigned: dict[str, int] = dict(found)
        if missing:
            # the caller holds the write lock, so max(idx) cannot move under us
            start = conn.execute(select(func.coalesce(func.max(table.c.idx), -1))).scalar_one() + 1
            new = {key: start + n for n, key in enumerate(missing)}
            conn.execute(
                table.insert(),
                [{"idx": i, "external_id": k, "first_seen": first_ts[k]} for k, i in new.items()],
            )
            known.update(new)
            assigned.update(new)
        return known, assigned

    @staticmethod
    def _lookup(conn, table: Table, keys: list[str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
        out: dict[str, int] = {}
        for start in range(0, len(keys), _IN_CHUNK):
            chunk = keys[start : start + _IN_CHUNK]
            stmt = select(table.c.external_id, table.c.idx).where(table.c.external_id.in_(chunk))
            out.update({k: i for k, i in conn.execute(stmt)})
        return out

    # ------------------------------------------------------------------- reads
    def snapshot(self, until: float | None = None, *, seq: int | None = None
                 ) -> InteractionGraph:
        """All edges with ``ts <= until`` (all edges when None) and, with ``seq``, ingest
        sequence ``<= seq`` (what a base with that sequence saw), ordered by time."""
        return self._edges(event_log.seen_condition(seq, until))

    def snapshot_seen(self, until: float | None = None) -> tuple[InteractionGraph, int]:
        """:meth:`snapshot` and the ingest sequence it was read at, from one read
        transaction: the events with a higher sequence are exactly those it did not see,
        whatever their time (store/event_log.py)."""
        with self._reader.connect() as conn, conn.begin():
            seq = event_log.ingest_seq(conn)
            return self._edges(event_log.seen_condition(seq, until), conn), seq

    def ingest_seq(self) -> int:
        """The ingest sequence now: the highest committed interaction id (0 when empty)."""
        with self.engine.connect() as conn:
            return event_log.ingest_seq(conn)

    def events_after(self, seq: int) -> event_log.StoredEvents:
        """The events committed after ingest sequence ``seq``, in ingest order."""
        with self.engine.connect() as conn:
            return event_log.events_after(conn, seq)

    def events_unseen_by(self, seq: int | None, cutoff: float) -> event_log.StoredEvents:
        """The stored events a base with ingest sequence ``seq`` and ``cutoff`` did not
        train on (late ones included), in ingest order; ``upto`` is the sequence now."""
        with self.engine.connect() as conn, conn.begin():
            return event_log.unseen_by(conn, seq, cutoff, upto=event_log.ingest_seq(conn))

    def edges_between(self, t0: float, t1: float) -> InteractionGraph:
        """Edges with ``t0 < ts <= t1`` (epoch seconds), ordered by time."""
        if t1 < t0:
            raise ValueError(f"edges_between: t1={t1} is before t0={t0}")
        ts = schema.interactions.c.ts
        return self._edges((ts > t0) & (ts <= t1))

    def _edges(self, cond, conn: Connection | None = None, *, fast: bool = True
               ) -> InteractionGraph:  # type: ignore[no-untyped-def]
        """The edges matching ``cond``, ordered by ``(ts, id)``, read as columns
        (store/columnar.py; ``fast=False``: row by row, the reference path)."""
        if conn is None:
            with self.engine.connect() as own:
                return self._edges(cond, own, fast=fast)
        # bounded by the ingest sequence read with the node counts, so the edges are the
        # ones these counts cover even where the counts and the rows are two statements
        bound = schema.interactions.c.id <= event_log.ingest_seq(conn)
        num_users, num_items = self._node_counts(conn)
        cols = columnar.read(conn, bound if cond is None else cond & bound, ids=False, fast=fast)
        return InteractionGraph(
            cols["user_idx"], cols["item_idx"], cols["ts"],
            cols["weight"].astype(np.float32), num_users, num_items,
        )

    def recent_neighbours(
        self, kind: str, idx: int, *, before: float | None = None, n: int = 20
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``n`` most recent neighbours of a node with ``ts < before``, newest first.

        Args:
            kind: ``"user"`` (neighbours are items) or ``"item"`` (neighbours are users).
        Returns:
            ``(neighbour_idx int64 [m], ts float64 [m], weight float32 [m])``, ``m <= n``.
        """
        t = schema.interactions
        own, other = _columns(kind)
        stmt = select(other, t.c.ts, t.c.weight).where(own == idx)
        if before is not None:
            stmt = stmt.where(t.c.ts < before)
        stmt = stmt.order_by(t.c.ts.desc(), t.c.id.desc()).limit(n)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return (
            np.array([r[0] for r in rows], np.int64),
            np.array([r[1] for r in rows], np.float64),
            np.array([r[2] for r in rows], np.float32),
        )

    def degrees(self, until: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Interaction counts ``(user_degree [num_users], item_degree [num_items])``."""
        g = self.snapshot(until)
        return (
            np.bincount(g.user, minlength=g.num_users),
            np.bincount(g.item, minlength=g.num_items),
        )

    def items_seen(self, user_idx: int, *, until: float | None = None) -> np.ndarray:
        """Sorted distinct item indices the user interacted with (``ts <= until``)."""
        # On the query path (every recommendation): straight through the driver. Measured
        # under HTTP load, SQLAlchemy's statement handling and the BEGIN/ROLLBACK around a
        # Core read were a fifth of a recommendation's server time.
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        sql = f"SELECT DISTINCT item_idx FROM interactions WHERE user_idx = {mark}"
        params: tuple[float, ...] = (int(user_idx),)
        if until is not None:
            sql += f" AND ts <= {mark}"
            params += (float(until),)
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            cursor.close()
        finally:
            raw.close()
        return np.sort(np.fromiter((r[0] for r in rows), np.int64, len(rows)))

    def counts(self) -> dict[str, int]:
        """Row counts of ``interactions``, ``users``, ``items`` and ``dead_letters``."""
        tables = (schema.interactions, schema.users, schema.items, schema.dead_letters)
        with self.engine.connect() as conn:
            return {
                tbl.name: conn.execute(select(func.count()).select_from(tbl)).scalar_one()
                for tbl in tables
            }

    def item_counts(self, *, since: float | None = None) -> np.ndarray:
        """Interactions per item with ``ts > since`` (all when None), ``[num_items]`` int64,
        counted in SQL (a GROUP BY, not a read of every edge)."""
        t = schema.interactions
        stmt = select(t.c.item_idx, func.count()).group_by(t.c.item_idx)
        if since is not None:
            stmt = stmt.where(t.c.ts > since)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
            _, num_items = self._node_counts(conn)
        counts = np.zeros(num_items, np.int64)
        if rows:
            # flattened through fromiter: np.array(rows) probes every Row for the array
            # protocols (six failed attribute look-ups each, 2.6 s of a 100k-item refresh)
            pairs = np.fromiter((v for row in rows for v in row), np.int64, 2 * len(rows))
            idx, n = pairs.reshape(-1, 2).T
            counts[idx] = n
        return counts

    def last_event_time(self) -> float | None:
        """The newest stored event time (epoch seconds), or None for an empty store."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.max(schema.interactions.c.ts))).scalar_one()

    def _node_counts(self, conn) -> tuple[int, int]:  # type: ignore[no-untyped-def]
        def size(table: Table) -> int:
            return conn.execute(select(func.coalesce(func.max(table.c.idx), -1))).scalar_one() + 1

        return size(schema.users), size(schema.items)

    def node_index(self, kind: str, external_ids: Iterable[str]) -> dict[str, int]:
        """Dense indices of the known ids among ``external_ids`` (unknown ones are absent)."""
        table = _node_table(kind)
        with self.engine.connect() as conn:
            return self._lookup(conn, table, list(dict.fromkeys(external_ids)))

    def node_ids(self, kind: str, start: int = 0) -> list[str]:
        """External ids indexed by dense index: ``node_ids("user")[idx]``; with ``start``,
        those of indices ``start, start + 1, ...`` only (the nodes added since)."""
        table = _node_table(kind)
        stmt = select(table.c.external_id).where(table.c.idx >= start).order_by(table.c.idx)
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def dead_letter_rows(self, limit: int = 100) -> list[dict[str, object]]:
        """The most recent dead letters, newest first, as dicts of their columns."""
        t = schema.dead_letters
        stmt = select(t).order_by(t.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def event_ids(self) -> set[str]:
        """Every stored event id (for audits and tests; reads the whole table)."""
        with self.engine.connect() as conn:
            return set(conn.execute(select(schema.interactions.c.event_id)).scalars())


def storable_text(text: str) -> str:
    """``text`` with what no store can hold as text (NUL, lone surrogates) written as
    backslash escapes, so a dead letter's reason can never fail like its message did.

    >>> storable_text("bad 'u\\ud800\\x00x'")
    "bad 'u\\\\ud800\\\\x00x'"
    """
    if text.isascii() and "\x00" not in text:
        return text
    escaped = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return escaped.replace("\x00", "\\x00")


def _node_table(kind: str) -> Table:
    if kind not in ("user", "item"):
        raise ValueError(f"kind must be 'user' or 'item', got {kind!r}")
    return schema.users if kind == "user" else schema.items


def _columns(kind: str):  # type: ignore[no-untyped-def]
    t = schema.interactions
    if kind == "user":
        return t.c.user_idx, t.c.item_idx
    if kind == "item":
        return t.c.item_idx, t.c.user_idx
    raise ValueError(f"kind must be 'user' or 'item', got {kind!r}")
