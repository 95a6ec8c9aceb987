"""Engine construction: SQLite (default, WAL mode) or PostgreSQL, chosen by URL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import StaticPool

DEFAULT_STORE_URL = "sqlite:///./var/streamrec.db"


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
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        immediate = conn.get_execution_options().get("write_lock", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
