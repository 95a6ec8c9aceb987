"""WorkerSupervisor: replaces a worker that dies, stops on a start-up failure or a signal, and
refuses a port another server holds."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from stream.broker import free_port
from streamrec.api_workers import STARTUP_FAILURE, WorkerSupervisor, reuse_port_supported

pytestmark = pytest.mark.skipif(not reuse_port_supported(), reason="needs SO_REUSEPORT")


def dies_once_then_serves(host: str, port: int, kwargs: dict[str, Any]) -> None:
    """The first start exits with status 1; later starts record themselves and wait."""
    marker = Path(kwargs["dir"]) / "started"
    starts = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(starts + 1))
    if starts == 0:
        raise SystemExit(1)
    time.sleep(60)


def fails_at_start_up(host: str, port: int, kwargs: dict[str, Any]) -> None:
    raise SystemExit(STARTUP_FAILURE)


def _signal_when(condition, timeout: float = 30.0) -> threading.Thread:  # type: ignore[no-untyped-def]
    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the supervisor in the main thread

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_dead_worker_is_replaced_and_a_signal_stops_all(tmp_path: Path) -> None:
    supervisor = WorkerSupervisor(1, "127.0.0.1", 0, {"dir": str(tmp_path)},
                                  target=dies_once_then_serves)
    assert supervisor.port > 0 and "workers=1" in repr(supervisor)
    marker = tmp_path / "started"
    watcher = _signal_when(lambda: marker.exists() and marker.read_text() == "2")
    started = time.monotonic()
    assert supervisor.run(poll_s=0.05) == 0
    watcher.join()
    assert marker.read_text() == "2"  # started, died, replaced once
    assert all(not p.is_alive() for p in supervisor._processes)
    assert time.monotonic() - started < 30  # the replacement was stopped, not waited out


def test_a_start_up_failure_stops_the_supervisor() -> None:
    supervisor = WorkerSupervisor(2, "127.0.0.1", 0, {}, target=fails_at_start_up)
    assert supervisor.run(poll_s=0.05) == STARTUP_FAILURE
    assert all(not p.is_alive() for p in supervisor._processes)


def test_a_port_in_use_is_refused_before_any_worker_starts() -> None:
    port = free_port()
    with socket.socket() as other:  # another server, not in a SO_REUSEPORT group
        other.bind(("127.0.0.1", port))
        other.listen()
        with pytest.raises(OSError, match="pick another --port"):
            WorkerSupervisor(2, "127.0.0.1", port, {})
    with pytest.raises(ValueError, match="at least 1"):
        WorkerSupervisor(0, "127.0.0.1", 0, {})
