"""Wake a reader as soon as another process commits to the store, without polling the tables.

A serving process keeps its answers fresh by re-reading what changed (new events, overlay
rows, a new active version). :class:`ChangeFeed` tells it *when* to look, at almost no idle
cost:

* PostgreSQL: ``LISTEN`` on :data:`CHANNEL`. A statement-level trigger on each of
  :data:`WATCHED` calls ``pg_notify`` (installed once, idempotently, by
  :func:`install_triggers`); the notification arrives when the writing transaction commits,
  one per transaction and table however many rows it wrote. The waiting connection sleeps in
  ``select()`` on its socket.
* SQLite (a file): ``PRAGMA data_version`` on a connection of its own, polled every
  ``poll_s`` (default 20 ms). The value changes when any other connection commits; reading it
  touches only the shared WAL index in memory, no table or page.
* An in-memory SQLite store has a single shared connection, whose own commits never change
  ``data_version``: :meth:`ChangeFeed.open` returns None and the caller keeps polling.

A wake-up may be spurious (another schema on the same PostgreSQL database, a write to a table
the reader does not serve); it never comes late by more than ``poll_s`` on SQLite.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import Engine, text

log = logging.getLogger(__name__)

CHANNEL = "streamrec_changes"
#: Tables whose commits wake the readers: new events (and with them new users and items), the
#: incremental overlay, and the active version.
WATCHED = ("interactions", "embedding_overlay", "embedding_active")
_DDL_LOCK_KEY = 0x5EED_0005  # PostgreSQL advisory lock: installing the triggers

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION streamrec_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME);
    RETURN NULL;
END
$$"""


def install_triggers(engine: Engine) -> None:
    """Create (or replace) the notifying triggers on :data:`WATCHED` (PostgreSQL only; the
    tables must exist). Safe to run from several processes at once."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DDL_LOCK_KEY})
        conn.execute(text(_FUNCTION))
        for table in WATCHED:
            conn.execute(text(
                f"CREATE OR REPLACE TRIGGER streamrec_notify_change AFTER INSERT OR UPDATE OR "
                f"DELETE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION "
                "streamrec_notify_change()"))


class ChangeFeed:
    """Blocks in :meth:`wait` until another connection commits to the store (or a timeout).

    Build it with :meth:`open`. Not thread-safe: one waiting thread per feed.

    Args:
        engine: the store's engine (the feed holds one of its connections).
        poll_s: SQLite: seconds between ``data_version`` reads (default 0.02).

    >>> import os, tempfile
    >>> from store.engine import make_engine
    >>> url = "sqlite:///" + os.path.join(tempfile.mkdtemp(), "store.db")
    >>> writer, feed = make_engine(url), ChangeFeed.open(make_engine(url))
    >>> feed.wait(0.05)
    False
    >>> with writer.begin() as conn:
    ...     _ = conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    >>> feed.wait(5.0), feed.wakeups
    (True, 1)
    >>> feed.close()
    """

    def __init__(self, engine: Engine, *, poll_s: float = 0.02) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be positive, got {poll_s}")
        self.engine, self.poll_s = engine, poll_s
        self.dialect = engine.dialect.name
        self._raw: Any = engine.raw_connection()
        self._conn: Any = self._raw.driver_connection
        self._version: int | None = None
        if self.dialect == "postgresql":
            self._conn.autocommit = True
            self._conn.execute(f"LISTEN {CHANNEL}")
        else:
            self._version = self._data_version()
        self.wakeups = 0

    @classmethod
    def open(cls, engine: Engine, *, poll_s: float = 0.02) -> ChangeFeed | None:
        """A feed on ``engine``, or None where there is none (in-memory SQLite, another
        database, or the triggers could not be installed: the reason is logged)."""
        url = engine.url
        if engine.dialect.name == "sqlite" and (url.database in (None, "", ":memory:")):
            return None
        if engine.dialect.name not in ("sqlite", "postgresql"):
            return None
        try:
            install_triggers(engine)
            return cls(engine, poll_s=poll_s)
        except Exception as exc:  # the caller falls back to polling the tables
            log.warning("no change feed on %s (%s: %s); answers refresh on the polling "
                        "interval only", url.render_as_string(hide_password=True),
                        type(exc).__name__, exc)
            return None

    def __repr__(self) -> str:
        return f"ChangeFeed({self.dialect}, poll_s={self.poll_s})"

    def _data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def wait(self, timeout_s: float, stop: threading.Event | None = None) -> bool:
        """True as soon as another connection committed since the last call (every pending
        notification is consumed); False after ``timeout_s`` seconds or once ``stop`` is
        set (checked at least every 0.25 s)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (stop is not None and stop.is_set()):
                return False
            if self.dialect == "postgresql":
                got = list(self._conn.notifies(timeout=min(left, 0.25), stop_after=1))
                if got:
                    self._drain()
                    self.wakeups += 1
                    return True
            else:
                version = self._data_version()
                if version != self._version:
                    self._version = version
                    self.wakeups += 1
                    return True
                time.sleep(min(left, self.poll_s))

    def _drain(self) -> None:
        """Consume notifications already queued: one wake-up for a burst of commits."""
        while list(self._conn.notifies(timeout=0, stop_after=1)):
            pass

    def close(self) -> None:
        """Release the connection (a PostgreSQL one, left in autocommit and listening, is
        discarded rather than returned to the pool)."""
        if self.dialect == "postgresql":
            self._raw.invalidate()
        else:
            self._raw.close()
