"""Producer-consumer batch prefetching: worker threads build mini-batches while the model
trains on earlier ones, through bounded queues, yet batches arrive in index order.

Batch ``i`` is built by worker ``i % num_workers`` and read from that worker's queue, so
the order (and, if ``make_batch(i)`` seeds itself from ``i``, the content) does not depend
on thread scheduling. Numpy and torch release the GIL in their kernels, which is where the
overlap comes from.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_POLL_SECONDS = 0.1


class _Failure:
    def __init__(self, index: int, error: BaseException) -> None:
        self.index, self.error = index, error


class BackgroundBatches(Generic[T]):
    """Iterate ``make_batch(0), ..., make_batch(num_batches - 1)``, built ahead of time by
    ``num_workers`` threads, each holding at most ``queue_size`` finished batches.

    Args:
        make_batch: builds batch ``i``; must be thread-safe (e.g. seed its own generator
            from ``i``).
        num_batches: how many batches to produce.
        num_workers: producer threads (default: ``2``); ``0`` builds batches inline.
        queue_size: bound of each worker's queue (default: ``4``).

    An exception in a worker is re-raised in the consumer at that batch. Leaving the
    ``with`` block early stops the workers.

    >>> with BackgroundBatches(lambda i: i * i, num_batches=5, num_workers=2) as batches:
    ...     list(batches)
    [0, 1, 4, 9, 16]
    """

    def __init__(
        self,
        make_batch: Callable[[int], T],
        num_batches: int,
        num_workers: int = 2,
        queue_size: int = 4,
    ) -> None:
        if num_workers < 0 or queue_size < 1 or num_batches < 0:
            raise ValueError("need num_workers >= 0, queue_size >= 1 and num_batches >= 0")
        self.make_batch, self.num_batches = make_batch, num_batches
        self.num_workers, self.queue_size = min(num_workers, max(num_batches, 1)), queue_size
        self._stop = threading.Event()
        self._queues: list[queue.Queue[object]] = []
        self._threads: list[threading.Thread] = []

    def _put(self, q: queue.Queue[object], item: object) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, worker: int) -> None:
        q = self._queues[worker]
        for i in range(worker, self.num_batches, self.num_workers):
            if self._stop.is_set():
                return
            try:
                item: object = self.make_batch(i)
            except BaseException as error:  # handed to the consumer, which re-raises it
                self._put(q, _Failure(i, error))
                return
            if not self._put(q, item):
                return

    def __enter__(self) -> BackgroundBatches[T]:
        self._stop.clear()
        self._queues = [queue.Queue(maxsize=self.queue_size) for _ in range(self.num_workers)]
        self._threads = [
            threading.Thread(target=self._work, args=(w,), name=f"batch-producer-{w}",
                             daemon=True)
            for w in range(self.num_workers)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __iter__(self) -> Iterator[T]:
        if not self.num_workers:
            for i in range(self.num_batches):
                yield self.make_batch(i)
            return
        if not self._threads:
            raise RuntimeError("iterate BackgroundBatches inside its `with` block")
        for i in range(self.num_batches):
            item = self._queues[i % self.num_workers].get()
            if isinstance(item, _Failure):
                raise RuntimeError(f"building batch {item.index} failed: {item.error}") \
                    from item.error
            yield item  # type: ignore[misc]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._threads = []
