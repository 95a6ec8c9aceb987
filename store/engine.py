"""Engine construction: SQLite (default, WAL mode) or PostgreSQL, chosen by URL."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import TracebackType

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import StaticPool

DEFAULT_STORE_URL = "sqlite:///./var/streamrec.db"
# Pages of write-ahead log after which a committing connection checkpoints it itself. Each
# ingested batch dirties a few thousand index pages (event ids, users and items land all
# over their B-trees); at SQLite's default of 1000 nearly every commit checkpointed, which
# was a fifth of the ingest writer's time. A WalCheckpointer keeps the log short instead.
WAL_AUTOCHECKPOINT_PAGES = 16_384

log = logging.getLogger(__name__)


def make_engine(url: str = DEFAULT_STORE_URL, *, echo: bool = False) -> Engine:
    """Create an engine for ``url``; SQLite files get WAL mode and immediate write locks.

    A ``postgresql://`` URL uses psycopg 3 (the ``postgres`` extra). The SQLite file's
    parent folder is created when missing.

    >>> make_engine("sqlite://").dialect.name
    'sqlite'
    """
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        return _sqlite_engine(url, echo=echo)
    return create_engine(url, echo=echo, pool_pre_ping=True)


def _sqlite_engine(url: str, *, echo: bool) -> Engine:
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if path and path != ":memory:":
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    if not path or path == ":memory:":
        # one shared in-memory database for every thread (the ingest writer thread included)
        engine = create_engine(
            url, echo=echo, poolclass=StaticPool,
            connect_args={"timeout": 30, "check_same_thread": False},
        )
    else:
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30})

    # pysqlite's own transaction handling defers BEGIN and never takes the write lock up
    # front; two writers then deadlock on lock upgrade. Take control: write transactions
    # (execution option ``write_lock=True``) BEGIN IMMEDIATE, reads a plain BEGIN.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB: the hot index pages stay cached
        cursor.execute("PRAGMA temp_store=MEMORY")  # the ingest staging table
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        immediate = conn.get_execution_options().get("write_lock", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class WalCheckpointer:
    """Checkpoint a SQLite file database's write-ahead log from a background thread.

    A PASSIVE checkpoint never blocks writers or readers, and sqlite3 releases the GIL while
    it copies pages, so the ingest writer thread no longer pays for checkpoints in its
    commits (a latency spike per checkpoint otherwise). Does nothing for PostgreSQL or an
    in-memory database. Use as a context manager around the ingest loop.

    Args:
        engine: the store's engine.
        interval_s: seconds between checkpoints (default 1.0).

    >>> with WalCheckpointer(make_engine("sqlite://")) as cp:
    ...     cp.running
    False
    """

    def __init__(self, engine: Engine, interval_s: float = 1.0) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.engine, self.interval_s = engine, interval_s
        database = engine.url.database or ""
        self.enabled = engine.dialect.name == "sqlite" and database not in ("", ":memory:")
        self.checkpoints = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> WalCheckpointer:
        if self.enabled and not self.running:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                raw = self.engine.raw_connection()
                try:  # autocommit mode (see _on_connect): the PRAGMA runs outside a BEGIN
                    raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                finally:
                    raw.close()
            except Exception as exc:  # a failed checkpoint is retried on the next tick
                log.warning("WAL checkpoint failed (%s); retrying in %.1fs", exc, self.interval_s)

    def __enter__(self) -> WalCheckpointer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
