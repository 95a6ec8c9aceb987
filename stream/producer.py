"""Sending events to Kafka: topic creation, keying by user id, rate limiting."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from stream.events import Event


def ensure_topic(bootstrap: str, topic: str, partitions: int = 4) -> bool:
    """Create ``topic`` with ``partitions`` unless it exists; True when it was created."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamrec-admin")
    try:
        if topic in admin.list_topics():
            return False
        try:
            admin.create_topics([NewTopic(topic, partitions, 1)])
        except TopicAlreadyExistsError:
            return False
        return True
    finally:
        admin.close()


class RateLimiter:
    """Paces calls to at most ``rate`` per second (None: unlimited), without drift.

    >>> limiter = RateLimiter(None); limiter.wait(); limiter.count
    1
    """

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be > 0 events/s, got {rate}")
        self.rate = rate
        self.count = 0
        self._clock = clock
        self._start = clock()

    def wait(self) -> None:
        self.count += 1
        if self.rate is None:
            return
        due = self._start + self.count / self.rate
        delay = due - self._clock()
        if delay > 0:
            time.sleep(delay)


class EventProducer:
    """A Kafka producer of events: JSON value, key = user id (one user stays on one partition).

    Args:
        bootstrap: ``HOST:PORT`` of a broker.
        topic: destination topic.
        linger_ms: how long to batch before sending (default 5).
    """

    def __init__(self, bootstrap: str, topic: str, *, linger_ms: int = 5) -> None:
        self.topic = topic
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            linger_ms=linger_ms,
            acks="all",
            retries=5,
            client_id="streamrec-producer",
        )

    def send(self, event: Event) -> None:
        self._producer.send(self.topic, key=event.user_id.encode(), value=event.to_json())

    def send_raw(
        self,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send raw bytes as they are (used for tests and dead-letter forwarding)."""
        self._producer.send(self.topic, key=key, value=value, headers=headers)

    def send_all(
        self,
        events: Iterable[Event],
        *,
        rate: float | None = None,
        on_sent: Callable[[int], None] | None = None,
    ) -> int:
        """Send every event (paced to ``rate`` events/s), flush, and return how many."""
        limiter = RateLimiter(rate)
        for event in events:
            limiter.wait()
            self.send(event)
            if on_sent is not None:
                on_sent(1)
        self.flush()
        return limiter.count

    def flush(self, timeout_s: float | None = 60.0) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self) -> None:
        self._producer.close()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        self.close()
