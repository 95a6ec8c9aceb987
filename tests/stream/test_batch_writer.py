"""BatchWriter: order, back-pressure without deadlock, failure hand-over."""

from __future__ import annotations

import threading
import time

import pytest

from stream.batch_writer import BatchWriter


def test_submitting_beyond_depth_without_collecting_does_not_deadlock() -> None:
    writer = BatchWriter(lambda b: b + 1, depth=2)
    done = threading.Event()

    def feed() -> None:
        for k in range(10):
            writer.submit(k)  # the consumer may submit many before it collects
        done.set()

    threading.Thread(target=feed, daemon=True).start()
    assert done.wait(5), "submit blocked although the writer had finished"
    assert writer.drain() == [(k, k + 1) for k in range(10)]
    writer.close()


def test_depth_bounds_the_write_backlog() -> None:
    gate = threading.Event()
    writer = BatchWriter(lambda b: gate.wait(5) and b, depth=1)
    writer.submit(1)  # being written, blocked on the gate
    started = time.monotonic()
    threading.Timer(0.3, gate.set).start()
    writer.submit(2)  # waits for the first write to finish
    assert time.monotonic() - started >= 0.25
    assert [b for b, _ in writer.drain()] == [1, 2]
    writer.close()


def test_failure_stops_later_batches_and_is_reraised() -> None:
    def write(b: int) -> int:
        if b == 2:
            raise RuntimeError("disk on fire")
        return b

    writer = BatchWriter(write, depth=4)
    for k in range(4):
        writer.submit(k)
    assert [b for b, _ in writer.drain()] == [0, 1]  # committed before the failure
    with pytest.raises(RuntimeError, match="disk on fire"):
        writer.drain()
    writer.close()


def test_drain_with_a_timeout_leaves_slow_batches_in_flight() -> None:
    gate = threading.Event()
    writer = BatchWriter(lambda b: gate.wait(5) and b if b == 2 else b, depth=4)
    for k in range(1, 4):
        writer.submit(k)
    started = time.monotonic()
    assert [b for b, _ in writer.drain(timeout_s=0.2)] == [1]  # 2 is stuck, 3 waits behind it
    assert 0.15 <= time.monotonic() - started < 2 and writer.in_flight == 2
    gate.set()
    assert [b for b, _ in writer.drain()] == [2, 3] and writer.in_flight == 0
    writer.close()
