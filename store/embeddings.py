"""The embedding store: versioned base embeddings plus an incremental overlay, in SQL.

A full retrain publishes a version (:meth:`EmbeddingStore.create_version`) and makes it the
served one with :meth:`EmbeddingStore.activate` (one transaction, so readers see the old or
the new version, never a mix). The incremental updater upserts overlay rows computed against
a base; a read (:meth:`EmbeddingStore.load`) merges the active base with the overlay rows of
that base only, so rows of an older base stop counting the moment a new base is activated.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from store import bulk, version_buffers
from store import embedding_schema as es
from store.embedding_schema import (
    EmbeddingSnapshot,
    NoActiveVersionError,
    OverlayDelta,
    UnknownVersionError,
    VersionInfo,
    VersionStateError,
)
from store.engine import DEFAULT_STORE_URL, make_engine

log = logging.getLogger(__name__)

_CHUNK = 20_000  # vectors per write transaction: bounds how long SQLite's write lock is held
_LOCK_KEY = 0x5EED_0002  # PostgreSQL advisory lock: activation vs. overlay writes
_LIVE_KEY = 0x5EED_0003  # PostgreSQL advisory lock: one live-update transaction at a time
_SERVABLE = ("ready", "active", "retired")
_VectorRow = tuple[int, str, int, bytes]  # (version_id, kind, idx, vector bytes)


class EmbeddingStore:
    """Embedding versions, the active pointer and the overlay (SQLite or PostgreSQL by URL).

    >>> import numpy as np
    >>> store = EmbeddingStore("sqlite://")
    >>> v = store.create_version("mf", 100.0, np.ones((2, 4)), np.zeros((3, 4)),
    ...                          hyper_parameters={"dim": 4}, metrics={})
    >>> store.activate(v)
    >>> store.write_overlay(v, "item", np.array([1]), np.full((1, 4), 2.0), 150.0)
    >>> snap = store.load()
    >>> snap.version.name, snap.items[:, 0].tolist(), snap.source("item", 1)
    ('v1', [0.0, 2.0, 0.0], 'overlay')
    """

    def __init__(self, url_or_engine: str | Engine = DEFAULT_STORE_URL) -> None:
        self.engine = (
            make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        )
        self._writer = self.engine.execution_options(write_lock=True)
        # one snapshot per read: REPEATABLE READ on PostgreSQL; a SQLite WAL read
        # transaction is a snapshot already
        self._reader = (
            self.engine.execution_options(isolation_level="REPEATABLE READ")
            if self.dialect == "postgresql"
            else self.engine
        )
        es.metadata.create_all(self.engine)
        es.upgrade(self.engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def __repr__(self) -> str:
        return f"EmbeddingStore({self.engine.url.render_as_string(hide_password=True)!r})"

    # ---------------------------------------------------------------- versions
    def create_version(
        self,
        model: str,
        cutoff: float,
        user_vectors: np.ndarray,
        item_vectors: np.ndarray,
        *,
        hyper_parameters: dict[str, Any],
        metrics: dict[str, Any],
        updater_state: bytes | None = None,
        ingest_seq: int | None = None,
        ranker_state: bytes | None = None,
        neighbour_buffers: bytes | None = None,
    ) -> int:
        """Publish a new version (status ``ready``); it is served only after :meth:`activate`.

        Args:
            model: model name, e.g. ``"lightgcn"`` (at most 64 characters).
            cutoff: epoch seconds; the retrain saw the events with ``ts <= cutoff``.
            user_vectors: ``[num_users, dim]`` real numbers, stored as float32.
            item_vectors: ``[num_items, dim]``, the same ``dim``.
            hyper_parameters, metrics: JSON-serialisable dicts (numpy scalars are fine).
            updater_state: torch-serialised incremental updater, published with the version.
            ranker_state: the trend ranker's parameters and state
                (:meth:`models.trend.TrendRanker.serving_state`), served with the version.
            ingest_seq: the graph store's ingest sequence at the training snapshot
                (:meth:`~store.graph.GraphStore.snapshot_seen`); with it the live updater
                replays exactly the events the base did not see, late ones included.
            neighbour_buffers: ``NeighbourBuffer.to_bytes()`` of the events the version saw,
                so the live updater starts without reading the history
                (store/version_buffers.py).
        Returns:
            The version id (shown as ``v{id}``).
        Raises:
            ValueError, TypeError: bad input; nothing is written.
            Any database error: the version is marked ``failed`` (best effort), re-raised.
        """
        if not isinstance(model, str) or not 0 < len(model) <= 64:
            raise ValueError(f"model must be a name of 1-64 characters, got {model!r}")
        if not math.isfinite(float(cutoff)):
            raise ValueError(f"cutoff must be finite epoch seconds, got {cutoff!r}")
        users = es.as_vectors(user_vectors, "user_vectors")
        items = es.as_vectors(item_vectors, "item_vectors", dim=users.shape[1])
        if updater_state is not None and not isinstance(updater_state, bytes | bytearray):
            raise TypeError(f"updater_state must be bytes, got {type(updater_state).__name__}")
        if neighbour_buffers is not None and not isinstance(neighbour_buffers, bytes | bytearray):
            raise TypeError(f"neighbour_buffers must be bytes, got "
                            f"{type(neighbour_buffers).__name__}")
        row = {
            "model": model,
            "cutoff": float(cutoff),
            "hyper_parameters": es.to_json(hyper_parameters, "hyper_parameters"),
            "metrics": es.to_json(metrics, "metrics"),
            "created_at": time.time(),
            "dim": users.shape[1],
            "num_users": users.shape[0],
            "num_items": items.shape[0],
            "status": "building",
            "updater_state": bytes(updater_state) if updater_state is not None else None,
            "ingest_seq": None if ingest_seq is None else int(ingest_seq),
            "ranker_state": bytes(ranker_state) if ranker_state is not None else None,
        }
        with self._writer.begin() as conn:
            created = conn.execute(insert(es.embedding_versions), row)
            version_id = int(created.inserted_primary_key[0])
        try:
            self._write_vectors(version_id, "user", users)
            self._write_vectors(version_id, "item", items)
            if neighbour_buffers is not None:
                version_buffers.write(self._writer, version_id, bytes(neighbour_buffers))
            t = es.embedding_versions
            with self._writer.begin() as conn:
                done = conn.execute(
                    update(t).where((t.c.id == version_id) & (t.c.status == "building")),
                    {"status": "ready"},
                )
                if done.rowcount != 1:
                    raise VersionStateError(f"v{version_id} stopped building (marked failed?)")
        except BaseException as exc:
            try:
                self.mark_failed(version_id, f"{type(exc).__name__}: {exc}")
            except Exception:  # the original error matters more; say why this failed too
                log.exception("could not mark v%d failed after %r", version_id, exc)
            raise
        return version_id

    def _write_vectors(self, version_id: int, kind: str, vectors: np.ndarray) -> None:
        """Insert ``vectors`` as rows ``idx = 0..n-1``, one transaction per chunk."""
        for start in range(0, vectors.shape[0], _CHUNK):
            rows = [
                (version_id, kind, start + n, vec.tobytes())
                for n, vec in enumerate(vectors[start : start + _CHUNK])
            ]
            with self._writer.begin() as conn:
                self._insert_vector_rows(conn, rows)

    def _insert_vector_rows(self, conn: Connection, rows: list[_VectorRow]) -> None:
        # the fast path of each driver: a plain executemany (SQLite) or binary COPY (psycopg)
        if self.dialect == "sqlite":
            conn.exec_driver_sql(
                "INSERT INTO embedding_vectors (version_id, kind, idx, vector) VALUES (?, ?, ?, ?)",
                rows,
            )
        elif self.dialect == "postgresql" and self.engine.dialect.driver == "psycopg":
            copy_sql = (
                "COPY embedding_vectors (version_id, kind, idx, vector) FROM STDIN (FORMAT BINARY)"
            )
            with conn.connection.cursor() as cur, cur.copy(copy_sql) as copy:
                copy.set_types(["int4", "varchar", "int4", "bytea"])
                for row in rows:
                    copy.write_row(row)
        else:
            keys = ("version_id", "kind", "idx", "vector")
            conn.execute(
                insert(es.embedding_vectors), [dict(zip(keys, r, strict=True)) for r in rows]
            )

    def mark_failed(self, version_id: int, reason: str) -> None:
        """Mark a version ``failed``: keep ``reason`` in its metrics, delete its vectors.

        Raises:
            UnknownVersionError: no such version.
            VersionStateError: it is the active version (activate another one first).
        """
        version_id = _version_id(version_id)
        t = es.embedding_versions
        now = time.time()
        with self._writer.begin() as conn:
            self._lock(conn)
            info = self._version(conn, version_id)
            if info.status == "active":
                raise VersionStateError(
                    f"{info.name} is active and cannot be marked failed; activate another first"
                )
            metrics = {**info.metrics, "failure": str(reason), "failed_at": now}
            conn.execute(
                update(t).where(t.c.id == version_id),
                {"status": "failed", "metrics": es.to_json(metrics, "metrics")},
            )
            self._drop_vectors(conn, [version_id], now)

    def activate(self, version_id: int, *, keep: int = 3) -> None:
        """Serve ``version_id`` from now on, atomically, then prune old versions' vectors.

        A ``ready`` version, the active one (a no-op apart from pruning) or a ``retired``
        one whose vectors are still kept (a rollback) can be activated. In the same
        transaction the previous active version becomes ``retired``; the active version and
        the newest ``keep - 1`` retired ones keep their vectors, older retired (and failed)
        versions lose them but keep their metadata row; overlay rows of bases that are
        neither active nor ``ready`` are deleted. Nothing else touches the active pointer.

        Args:
            keep: how many versions keep their vectors, the active one counted (default: 3).
        Raises:
            UnknownVersionError: no such version.
            VersionStateError: it is building, failed or pruned; nothing changes.
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (the active version), got {keep}")
        version_id = _version_id(version_id)
        t = es.embedding_versions
        now = time.time()
        with self._writer.begin() as conn:
            self._lock(conn)
            info = self._version(conn, version_id)
            if info.status not in _SERVABLE or info.pruned:
                state = "pruned" if info.pruned else info.status
                raise VersionStateError(f"{info.name} is {state} and cannot be activated")
            current = self._active_id(conn)
            if current != version_id:
                dialect = postgresql if self.dialect == "postgresql" else sqlite
                stmt = dialect.insert(es.embedding_active).values(id=1, version_id=version_id)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["id"], set_={"version_id": version_id}
                    )
                )
                conn.execute(
                    update(t).where((t.c.status == "active") & (t.c.id != version_id)),
                    {"status": "retired"},
                )
                conn.execute(
                    update(t).where(t.c.id == version_id),
                    {"status": "active", "activated_at": now},
                )
            self._prune(conn, version_id, keep, now)

    def _prune(self, conn: Connection, active_id: int, keep: int, now: float) -> None:
        t = es.embedding_versions
        rows = conn.execute(
            select(t.c.id, t.c.status)
            .where(t.c.pruned_at.is_(None) & t.c.status.in_(("retired", "failed")))
            .order_by(t.c.id.desc())
        ).all()
        retired = [vid for vid, status in rows if status == "retired"]
        doomed = retired[keep - 1 :] + [vid for vid, status in rows if status == "failed"]
        self._drop_vectors(conn, doomed, now)
        ready = select(t.c.id).where(t.c.status == "ready")
        o = es.embedding_overlay
        conn.execute(
            o.delete().where((o.c.base_version_id != active_id) & o.c.base_version_id.not_in(ready))
        )

    @staticmethod
    def _drop_vectors(conn: Connection, version_ids: Sequence[int], now: float) -> None:
        if not version_ids:
            return
        t, v, o = es.embedding_versions, es.embedding_vectors, es.embedding_overlay
        conn.execute(v.delete().where(v.c.version_id.in_(version_ids)))
        conn.execute(o.delete().where(o.c.base_version_id.in_(version_ids)))
        version_buffers.delete(conn, version_ids)
        conn.execute(
            update(t).where(t.c.id.in_(version_ids)),
            {"pruned_at": now, "updater_state": None, "ranker_state": None},
        )

    def active_version(self, conn: Connection | None = None) -> VersionInfo | None:
        """The served version, or None before the first activation (read on ``conn``, e.g.
        a :meth:`live_transaction`, when given)."""
        if conn is None:
            with self.engine.connect() as own:
                return self.active_version(own)
        active = self._active_id(conn)
        return None if active is None else self._version(conn, active)

    @contextmanager
    def live_transaction(self) -> Iterator[Connection]:
        """One write transaction of the live updater, serialised against every other one in
        every process (PostgreSQL: a transaction-scoped advisory lock; SQLite: its write
        lock), committed when the block exits and rolled back if it raises. What one live
        update derives from the stored events (overlay rows, ...) is written in it, so
        it lands whole or not at all."""
        with self._writer.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LIVE_KEY})
            yield conn

    def versions(self) -> list[VersionInfo]:
        """Every version, newest first (failed and pruned ones included)."""
        stmt = select(*es.version_columns()).order_by(es.embedding_versions.c.id.desc())
        with self.engine.connect() as conn:
            return [es.version_from_row(r) for r in conn.execute(stmt)]

    def get_version(self, version_id: int) -> VersionInfo:
        """Metadata of one version; raises :class:`UnknownVersionError` when absent."""
        with self.engine.connect() as conn:
            return self._version(conn, version_id)

    def updater_state(self, version_id: int) -> bytes | None:
        """The incremental updater's state published with the version (None if none)."""
        return self._blob(version_id, "updater_state")

    def ranker_state(self, version_id: int) -> bytes | None:
        """The trend ranker's state published with the version (None if it has none)."""
        return self._blob(version_id, "ranker_state")

    def neighbour_buffers(self, version_id: int) -> bytes | None:
        """The neighbour buffers published with the version (``NeighbourBuffer.to_bytes()``
        of the events it saw), or None: an older retrain, a 1-d model, a pruned version."""
        with self.engine.connect() as conn:
            info = self._version(conn, version_id)
            return version_buffers.read(conn, info.id)

    def _blob(self, version_id: int, column: str) -> bytes | None:
        t = es.embedding_versions
        with self.engine.connect() as conn:
            info = self._version(conn, version_id)
            blob = conn.execute(select(t.c[column]).where(t.c.id == info.id)).scalar()
        return None if blob is None else bytes(blob)

    # ------------------------------------------------------------------- reads
    def load(
        self,
        version_id: int | None = None,
        *,
        include_updater_state: bool = False,
        include_overlay: bool = True,
    ) -> EmbeddingSnapshot:
        """The merged embeddings of a version (default: the active one), read atomically.

        ``include_overlay=False`` gives the base matrices alone (what the incremental
        updater replays from).

        The pointer, the version's base matrices and its overlay rows come from one read
        transaction (a snapshot), so a concurrent activation or prune never shows a mix.

        Raises:
            NoActiveVersionError: ``version_id`` is None and nothing was activated yet.
            UnknownVersionError, VersionStateError: the version is absent, or has no vectors
                (building, failed or pruned).
        """
        with self._reader.connect() as conn, conn.begin():
            if version_id is None:
                version_id = self._active_id(conn)
                if version_id is None:
                    raise NoActiveVersionError(
                        "no embedding version is active yet; run a retrain and activate it"
                    )
            info = self._version(conn, version_id)
            if info.status not in _SERVABLE or info.pruned:
                state = "pruned" if info.pruned else info.status
                raise VersionStateError(f"{info.name} is {state}; it has no vectors to load")
            users = self._base_matrix(conn, info, "user")
            items = self._base_matrix(conn, info, "item")
            o = es.embedding_overlay
            overlay = conn.execute(
                select(o.c.kind, o.c.idx, o.c.vector, o.c.updated_at)
                .where(o.c.base_version_id == info.id)
                .order_by(o.c.kind, o.c.idx)
            ).all() if include_overlay else []
            updater = None
            if include_updater_state:
                t = es.embedding_versions
                blob = conn.execute(select(t.c.updater_state).where(t.c.id == info.id)).scalar()
                updater = None if blob is None else bytes(blob)
        snapshot = EmbeddingSnapshot(info, users, items, updater_state=updater)
        return snapshot.apply(_delta(overlay, info.dim, info.id))

    def _base_matrix(self, conn: Connection, info: VersionInfo, kind: str) -> np.ndarray:
        v = es.embedding_vectors
        rows = conn.execute(
            select(v.c.idx, v.c.vector)
            .where((v.c.version_id == info.id) & (v.c.kind == kind))
            .order_by(v.c.idx)
        ).all()
        expected = info.num_users if kind == "user" else info.num_items
        idx = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        if len(rows) != expected or not np.array_equal(idx, np.arange(expected)):
            raise VersionStateError(
                f"{info.name} has {len(rows)} stored {kind} vectors, expected {expected}; "
                "its vectors are incomplete (mark it failed and retrain)"
            )
        return es.decode([r[1] for r in rows], info.dim)

    # ----------------------------------------------------------------- overlay
    def write_overlay(
        self,
        base_version_id: int,
        kind: str,
        idx: np.ndarray,
        vectors: np.ndarray,
        updated_at: np.ndarray | float,
    ) -> None:
        """Upsert incremental vectors of nodes, computed against ``base_version_id``.

        One transaction; a node keeps one overlay row (the latest write). Rows for a base
        that is not active are stored but count only if that base is served, and they never
        replace a row of the active base. Within one call a repeated ``idx`` keeps its last
        row. Indices beyond the base's node count are new nodes.

        Args:
            kind: ``"user"`` or ``"item"``.
            idx: dense indices ``[n]`` (>= 0).
            vectors: ``[n, dim]`` with the base version's ``dim``.
            updated_at: epoch seconds, one per row ``[n]`` or one for all.
        Raises:
            UnknownVersionError: the base version does not exist.
            ValueError: shapes, dim or values are wrong; nothing is written.
        """
        base_version_id = _version_id(base_version_id)
        rows, dim = _overlay_rows(base_version_id, kind, idx, vectors, updated_at)
        self._upsert_overlay(base_version_id, rows, dim)

    def write_overlay_nodes(
        self,
        base_version_id: int,
        parts: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray | float]],
        *,
        conn: Connection | None = None,
    ) -> None:
        """Several :meth:`write_overlay` calls, e.g. users and items, in ONE transaction
        (``conn``'s, e.g. a :meth:`live_transaction`, when given; else its own).

        ``parts`` holds ``(kind, idx, vectors, updated_at)`` tuples as :meth:`write_overlay`
        takes them.
        """
        base_version_id = _version_id(base_version_id)
        rows: list[tuple[Any, ...]] = []
        dim: int | None = None
        for kind, idx, vectors, updated_at in parts:
            part, part_dim = _overlay_rows(base_version_id, kind, idx, vectors, updated_at)
            if dim is not None and part_dim != dim:
                raise ValueError(f"parts disagree on dim: {dim} vs {part_dim}")
            rows.extend(part)
            dim = part_dim
        if dim is not None:
            self._upsert_overlay(base_version_id, rows, dim, conn)

    def _upsert_overlay(self, base_version_id: int, rows: list[tuple[Any, ...]], dim: int,
                        conn: Connection | None = None) -> None:
        if conn is None:
            with self._writer.begin() as own:
                self._upsert_overlay(base_version_id, rows, dim, own)
            return
        self._lock(conn, shared=True)
        info = self._version(conn, base_version_id)
        if dim != info.dim:
            raise ValueError(f"vectors have dim {dim}, {info.name} has {info.dim}")
        if not rows:
            return
        active = self._active_id(conn)
        keep = active if active is not None and active != base_version_id else None
        for start in range(0, len(rows), _CHUNK):
            bulk.upsert_overlay(conn, rows[start : start + _CHUNK], keep_version=keep)

    def overlay_since(self, base_version_id: int, since: float) -> OverlayDelta:
        """Overlay rows of ``base_version_id`` with ``updated_at > since``, oldest first.

        Cheap incremental refresh for a serving process: ``snapshot.apply(delta)``. Rows are
        selected by their ``updated_at``; if writers may commit out of time order, pass the
        previous high-water mark minus a safety margin (re-applying a row is harmless).
        """
        o = es.embedding_overlay
        with self.engine.connect() as conn:
            info = self._version(conn, base_version_id)
            rows = conn.execute(
                select(o.c.kind, o.c.idx, o.c.vector, o.c.updated_at)
                .where((o.c.base_version_id == info.id) & (o.c.updated_at > float(since)))
                .order_by(o.c.updated_at, o.c.kind, o.c.idx)
            ).all()
        return _delta(rows, info.dim, info.id)

    def overlay_newest(self, base_version_id: int) -> float | None:
        """The newest ``updated_at`` among ``base_version_id``'s overlay rows (epoch s), or
        None without rows; one index lookup, for cheap change detection."""
        o = es.embedding_overlay
        stmt = select(func.max(o.c.updated_at)).where(
            o.c.base_version_id == _version_id(base_version_id))
        with self.engine.connect() as conn:
            newest = conn.execute(stmt).scalar()
        return None if newest is None else float(newest)

    def overlay_size(self, base_version_id: int) -> int:
        """How many overlay rows belong to ``base_version_id``."""
        o = es.embedding_overlay
        stmt = select(func.count()).where(o.c.base_version_id == _version_id(base_version_id))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    # ----------------------------------------------------------------- helpers
    def _lock(self, conn: Connection, *, shared: bool = False) -> None:
        """Serialise activation against overlay writes (SQLite: BEGIN IMMEDIATE does it)."""
        if self.dialect == "postgresql":
            fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
            conn.execute(text(f"SELECT {fn}(:k)"), {"k": _LOCK_KEY})

    @staticmethod
    def _active_id(conn: Connection) -> int | None:
        a = es.embedding_active
        return conn.execute(select(a.c.version_id).where(a.c.id == 1)).scalar()

    @staticmethod
    def _version(conn: Connection, version_id: int) -> VersionInfo:
        t = es.embedding_versions
        version_id = _version_id(version_id)
        row = conn.execute(select(*es.version_columns()).where(t.c.id == version_id)).first()
        if row is None:
            raise UnknownVersionError(f"embedding version v{version_id} does not exist")
        return es.version_from_row(row)


def _version_id(value: Any) -> int:
    """A version id as a plain int (numpy integers are fine); TypeError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"a version id is an int, got {value!r}")
    return int(value)


def _delta(rows: Sequence[Any], dim: int, base_version_id: int | None = None) -> OverlayDelta:
    return OverlayDelta(
        kind=np.array([r[0] for r in rows], dtype="<U4"),
        idx=np.fromiter((r[1] for r in rows), np.int64, len(rows)),
        vectors=es.decode([r[2] for r in rows], dim),
        updated_at=np.fromiter((r[3] for r in rows), np.float64, len(rows)),
        base_version_id=base_version_id,
    )


def _overlay_rows(
    base_version_id: int, kind: str, idx: Any, vectors: Any, updated_at: Any
) -> tuple[list[tuple[Any, ...]], int]:
    """Validated overlay rows of one kind and their dim; a repeated idx keeps its last row."""
    es.check_kind(kind)
    index = np.asarray(idx)
    if index.ndim != 1 or (index.size and not np.issubdtype(index.dtype, np.integer)):
        raise ValueError(f"idx must be a 1-d integer array, got {index.dtype} {index.shape}")
    if index.size and index.min() < 0:
        raise ValueError(f"idx must be >= 0, got {int(index.min())}")
    vecs = es.as_vectors(vectors, "vectors")
    if vecs.shape[0] != index.size:
        raise ValueError(f"{index.size} indices but {vecs.shape[0]} vectors")
    times = np.asarray(updated_at, np.float64)
    if times.ndim > 1 or (times.ndim == 1 and times.shape != index.shape):
        raise ValueError(f"updated_at must be one float or [{index.size}], got {times.shape}")
    times = np.broadcast_to(times, index.shape)
    if not np.isfinite(times).all():
        raise ValueError("updated_at must be finite epoch seconds")
    last = {int(i): n for n, i in enumerate(index)}
    rows = [
        (kind, i, vecs[n].tobytes(), float(times[n]), base_version_id) for i, n in last.items()
    ]
    return rows, vecs.shape[1]
