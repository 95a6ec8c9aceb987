"""Writes decoded batches on one background thread, in order, so Kafka fetching and decoding
overlap with the database work (SQLite and psycopg release the GIL while the database works).

The consumer thread submits batches and collects completions; it alone talks to Kafka, so
offsets are committed from the thread that owns the consumer, and only for batches whose
database transaction has committed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

B = TypeVar("B")
R = TypeVar("R")


class BatchWriter(Generic[B, R]):
    """Run ``write(batch)`` for each submitted batch on a worker thread, in submission order.

    Args:
        write: the work per batch; its result comes back through :meth:`completed`.
        depth: most batches submitted but not yet written (default 2); ``submit`` blocks
            beyond it, which is the back-pressure on the consumer.

    After ``write`` raises, the writer processes nothing more; the error is re-raised by the
    next :meth:`completed` or :meth:`drain`, and later batches are never reported done.

    >>> w = BatchWriter(lambda b: b * 2)
    >>> w.submit(1); w.submit(2); w.drain()
    [(1, 2), (2, 4)]
    >>> w.close()
    """

    def __init__(self, write: Callable[[B], R], depth: int = 2) -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self._write = write
        self._slots = threading.Semaphore(depth)
        self._todo: queue.Queue[B | None] = queue.Queue()
        self._done: queue.Queue[tuple[B, R]] = queue.Queue()
        self._in_flight = 0
        self._error: BaseException | None = None
        self._failed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batch-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._todo.get()
            if batch is None:
                return
            if self._failed.is_set():
                self._slots.release()
                continue  # after a failure nothing more is written
            try:
                self._done.put((batch, self._write(batch)))
            except BaseException as error:  # handed to the consumer thread, which re-raises
                self._error = error
                self._failed.set()
            finally:
                self._slots.release()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, batch: B) -> None:
        """Queue a batch; blocks while ``depth`` batches are in flight."""
        while not self._slots.acquire(timeout=0.1):
            self._raise_if_failed()
        self._in_flight += 1
        self._todo.put(batch)

    def completed(self) -> list[tuple[B, R]]:
        """Batches finished so far, in order, without waiting."""
        out: list[tuple[B, R]] = []
        while True:
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                break
            out.append(item)
            self._in_flight -= 1
        if not out:
            self._raise_if_failed()
        return out

    def drain(self, timeout_s: float | None = None) -> list[tuple[B, R]]:
        """Wait for every submitted batch, at most ``timeout_s`` seconds (default: no limit);
        returns the finished ones, in order (then re-raises a failure).

        Batches still being written when the time is up stay in flight: a later
        :meth:`completed` or :meth:`drain` reports them.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        out: list[tuple[B, R]] = []
        while self._in_flight:
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                item = self._done.get(timeout=0.05)
            except queue.Empty:
                if self._failed.is_set() and self._done.empty():
                    break
                continue
            out.append(item)
            self._in_flight -= 1
        if self._failed.is_set() and not out:
            self._raise_if_failed()
        return out

    def _raise_if_failed(self) -> None:
        if self._failed.is_set() and self._done.empty() and self._error is not None:
            raise self._error

    def close(self) -> None:
        self._todo.put(None)
        self._thread.join(timeout=30)
