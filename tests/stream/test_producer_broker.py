"""Rate limiting of `produce` and the `streamrec broker` command."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from stream.broker import free_port, port_open
from stream.producer import RateLimiter


def test_rate_limiter_paces_to_the_rate() -> None:
    limiter = RateLimiter(200.0)
    start = time.monotonic()
    for _ in range(50):
        limiter.wait()
    elapsed = time.monotonic() - start
    assert 0.22 <= elapsed < 1.0  # 50 events at 200/s take about 0.25 s


def test_rate_limiter_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        RateLimiter(0)


@pytest.mark.integration
def test_broker_command_listens_and_stops_on_ctrl_c() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamrec.cli", "broker", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the broker did not start listening"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
        assert proc.returncode == 0 and "stopping the broker" in proc.stderr.read()
        assert not port_open("127.0.0.1", port)
    finally:
        if proc.poll() is None:
            proc.kill()
