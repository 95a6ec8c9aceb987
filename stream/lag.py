"""Consumer lag of the ingest loop, read from what the consumer already holds after a poll (the
high watermark of the last fetch response and the position), so measuring it costs no request
to the broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kafka import KafkaConsumer
from kafka.errors import IllegalStateError


class LagMeter:
    """Consumer lag per partition from what the consumer already knows, at most every
    ``interval_s``; no request to the broker.

    lag = high watermark - position. Both are "next offset" values, so a caught-up partition
    has lag 0. The high watermark is the one the last fetch response carried (the broker's
    ListOffsets is not asked: the local broker answers it late); the position is the offset of
    the next record ``poll()`` returns, so records fetched but not yet polled count as lag,
    batches still being written do not. A partition is measured only once a fetch has answered
    for it: before that ``highwater()`` is None, and ``position()`` of a partition without a
    position would ask the coordinator for it.

    Args:
        consumer: the polling kafka-python consumer; call :meth:`measure` from its thread.
        interval_s: least seconds between two measurements (default 0.5).
        clock: monotonic seconds (default :func:`time.monotonic`).
    """

    def __init__(
        self,
        consumer: KafkaConsumer,
        *,
        interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self.interval_s = interval_s
        self.clock = clock
        self._due = float("-inf")

    def measure(self, *, force: bool = False) -> dict[int, int] | None:
        """Messages behind the log end by partition number, or None when not due (unless
        ``force``) or when no assigned partition has been fetched from yet."""
        now = self.clock()
        if not force and now < self._due:
            return None
        lags: dict[int, int] = {}
        for tp in self.consumer.assignment():
            try:
                high = self.consumer.highwater(tp)
                if high is None:
                    continue
                # timeout 0: the position is known once a fetch answered, so this never waits
                position = self.consumer.position(tp, timeout_ms=0)
            except IllegalStateError:
                continue  # revoked since assignment() was read; no longer ours to report
            if position is not None:
                # a fetch response older than the position cannot be newer than it
                lags[tp.partition] = max(0, high - position)
        if not lags:
            # nothing fetched yet: stay due, so the first fetch is reported at once
            return None
        self._due = now + self.interval_s
        return lags
