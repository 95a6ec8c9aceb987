"""The neighbour buffers a version was trained with, stored next to its vectors.

The retrain has the history its base saw in memory; the live updater needs only each node's
most recent ``N`` edges of it (:class:`models.neighbour_buffer.NeighbourBuffer`). So the
retrain publishes the buffer with the version (``NeighbourBuffer.to_bytes()``) and the
updater's start-up reads it back instead of the whole history. The bytes are stored in
``embedding_buffers`` in parts of :data:`PART_BYTES`, one transaction each: a buffer grows
with the number of nodes (16 bytes a held edge, about 200 MiB at 10M synthetic events), a
single ``bytea`` may not exceed 1 GiB on PostgreSQL, and a part bounds how long SQLite's
write lock is held. A version from before the table existed simply has no rows (the
store's ``create_all`` adds the table to an existing database).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Engine, insert, select

from store import embedding_schema as es

PART_BYTES = 64 * 1024 * 1024  # bytes per row of embedding_buffers


def write(writer: Engine, version_id: int, data: bytes) -> None:
    """Store ``data`` as the version's buffers (parts ``0, 1, ...``, a transaction each);
    the caller marks the version ready only after this returns."""
    view = memoryview(data)
    for part, start in enumerate(range(0, max(len(view), 1), PART_BYTES)):
        with writer.begin() as conn:
            conn.execute(insert(es.embedding_buffers),
                         {"version_id": int(version_id), "part": part,
                          "data": bytes(view[start:start + PART_BYTES])})


def read(conn: Connection, version_id: int) -> bytes | None:
    """The version's buffer bytes, or None when it has none (an older retrain, a pruned
    version, a 1-dimensional model)."""
    b = es.embedding_buffers
    parts = conn.execute(select(b.c.data).where(b.c.version_id == int(version_id))
                         .order_by(b.c.part)).scalars().all()
    return None if not parts else b"".join(bytes(p) for p in parts)


def delete(conn: Connection, version_ids: Sequence[int]) -> None:
    """Drop the buffers of these versions (with their vectors: failed or pruned)."""
    b = es.embedding_buffers
    conn.execute(b.delete().where(b.c.version_id.in_([int(v) for v in version_ids])))
