"""Engine settings and the background WAL checkpointer (SQLite files)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import text

from store.engine import WAL_AUTOCHECKPOINT_PAGES, WalCheckpointer, make_engine


def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 's.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == (
            WAL_AUTOCHECKPOINT_PAGES
        )
    engine.dispose()


def test_checkpointer_empties_the_wal_while_writes_go_on(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x BLOB)"))
    wal = Path(f"{path}-wal")
    with WalCheckpointer(engine, interval_s=0.05) as cp:
        assert cp.running
        for _ in range(20):
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (randomblob(100000))"))
        deadline = time.monotonic() + 10
        while cp.checkpoints < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert not cp.running and cp.checkpoints >= 2
    # 2 MB is far below the automatic threshold: only the checkpointer can have copied the
    # log's pages into the database file itself
    assert 4096 * WAL_AUTOCHECKPOINT_PAGES > 20 * 100_000
    assert path.stat().st_size > 20 * 100_000 and wal.exists()
    engine.dispose()


def test_checkpointer_is_a_no_op_off_sqlite_files() -> None:
    with WalCheckpointer(make_engine("sqlite://")) as cp:
        assert not cp.enabled and not cp.running
    with pytest.raises(ValueError, match="interval_s"):
        WalCheckpointer(make_engine("sqlite://"), interval_s=0)
