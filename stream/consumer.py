"""The ingest loop: Kafka consumer group -> graph store, at-least-once, exactly-once in effect.

Order of a batch, which is what makes the delivery contract hold:

1. poll up to ``batch_size`` records (fewer when ``max_events`` is near);
2. decode each; a bad one becomes a dead letter (never raised, never dropped);
3. write events and dead letters in ONE database transaction (retried while the database
   is down, never skipped); duplicates are recognised by ``event_id``;
4. forward dead letters to the dead-letter topic, if one is configured;
5. hand the stored events to ``on_batch`` (the incremental updater);
6. only then commit the offsets past the batch, explicitly, per partition.

A crash anywhere before 6 redelivers the batch; step 3 makes that harmless. Steps 3-5 run
on a writer thread (:class:`BatchWriter`) while the next poll happens, and step 6 runs on the
consumer thread once the writer reports the batch done; before partitions are revoked in a
rebalance, the writer is drained and its offsets committed.

Consumer lag (:class:`LagMeter`) is read from what the consumer already holds after a poll,
the high watermark of the last fetch response and the position, so measuring it costs no
request to the broker.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, IllegalStateError, KafkaError
from kafka.structs import OffsetAndMetadata

from store.graph import DeadLetter, GraphStore, WriteResult
from stream.batch_writer import BatchWriter
from stream.events import Event, InvalidEvent, decode_event
from stream.producer import EventProducer
from stream.retry import RetryPolicy, Stopped

log = logging.getLogger(__name__)


def make_consumer(
    bootstrap: str,
    topic: str,
    group: str,
    *,
    max_poll_interval_ms: int = 30_000,
    fetch_max_wait_ms: int = 50,
) -> KafkaConsumer:
    """A kafka-python consumer with manual commits, reading from the earliest offset.

    ``max_poll_interval_ms`` also bounds how long the local broker makes a first JoinGroup
    wait, so keep it small for development; ``fetch_max_wait_ms`` of 50 keeps per-hop latency
    near 6 ms instead of ~135 ms with the library's default of 500.
    """
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id=f"streamrec-ingest-{group}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=max_poll_interval_ms,
        session_timeout_ms=max(6_000, min(max_poll_interval_ms, 30_000)),
        heartbeat_interval_ms=1_000,
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )


@dataclass
class IngestStats:
    """Running totals of an ingest run."""

    consumed: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    lag: int | None = None
    """Messages behind the log end over the measured partitions, at the last measurement
    (None until one partition has been fetched from)."""

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        """Consumed events per second over the run."""
        return self.consumed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        return (
            f"consumed={self.consumed} stored={self.stored} duplicates={self.duplicates} "
            f"dead_letters={self.dead_letters} batches={self.batches} "
            f"elapsed={self.elapsed_s:.1f}s rate={self.rate:,.0f} events/s"
            + ("" if self.lag is None else f" lag={self.lag}")
        )


@dataclass
class DecodedBatch:
    """One poll's records split into events (with their sources) and dead letters."""

    events: list[Event] = field(default_factory=list)
    sources: list[tuple[int, int]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    size: int = 0


def decode_records(records: dict[TopicPartition, list]) -> DecodedBatch:  # type: ignore[type-arg]
    """Decode a ``poll()`` result; records that fail validation become dead letters."""
    batch = DecodedBatch()
    for tp, messages in records.items():
        for msg in messages:
            try:
                batch.events.append(decode_event(msg.value))
                batch.sources.append((tp.partition, msg.offset))
            except InvalidEvent as exc:
                batch.dead_letters.append(
                    DeadLetter(msg.value, exc.reason, tp.topic, tp.partition, msg.offset)
                )
        if messages:
            batch.next_offsets[tp] = messages[-1].offset + 1
            batch.size += len(messages)
    return batch


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


class IngestLoop:
    """Consume, store, update, commit; the caller owns the process (signals, logging).

    Args:
        consumer: a subscribed kafka-python consumer with auto-commit off.
        store: the graph store.
        batch_size: most records per poll and per transaction (default 2000).
        max_events: stop after consuming this many messages (default None: unbounded).
        idle_exit_s: stop after this many seconds without a message (default None: never).
        retry: policy for database outages (default: back off forever).
        on_batch: called with each batch's :class:`WriteResult` after the database commit and
            before the offset commit (the incremental updater hooks in here).
        dead_letter_producer: forwards dead letters to a topic when given.
        poll_timeout_ms: how long one poll waits for records (default 200).
        join_grace_s: how long an idle run waits for its first partition assignment before
            the idle clock starts anyway (default 60; a group join can take a while).
        pipeline_depth: batches written on the writer thread while the next ones are fetched
            (default 2). Offsets are still committed only after each batch's DB commit.
        on_lag: called on the consumer thread with the lag (messages) by partition number,
            after a poll at most every ``lag_interval_s`` and once at the end of the run;
            only partitions already fetched from are in it (see :class:`LagMeter`).
        lag_interval_s: least seconds between two lag measurements (default 0.5).
    """

    def __init__(
        self,
        consumer: KafkaConsumer,
        store: GraphStore,
        *,
        batch_size: int = 2000,
        max_events: int | None = None,
        idle_exit_s: float | None = None,
        retry: RetryPolicy | None = None,
        on_batch: Callable[[WriteResult], None] | None = None,
        dead_letter_producer: EventProducer | None = None,
        poll_timeout_ms: int = 200,
        join_grace_s: float = 60.0,
        pipeline_depth: int = 2,
        on_lag: Callable[[dict[int, int]], None] | None = None,
        lag_interval_s: float = 0.5,
    ) -> None:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.consumer = consumer
        self.store = store
        self.batch_size = batch_size
        self.max_events = max_events
        self.idle_exit_s = idle_exit_s
        self.retry = retry or RetryPolicy()
        self.on_batch = on_batch
        self.dead_letter_producer = dead_letter_producer
        self.poll_timeout_ms = poll_timeout_ms
        self.join_grace_s = join_grace_s
        self.pipeline_depth = pipeline_depth
        self.on_lag = on_lag
        # in-memory test doubles have no high watermark; they simply report no lag
        self._lag = (
            LagMeter(consumer, interval_s=lag_interval_s)
            if hasattr(consumer, "highwater") else None
        )
        self._writer: BatchWriter[DecodedBatch, WriteResult] | None = None
        self.stats = IngestStats()
        self._stop = False

    def stop(self) -> None:
        """Ask the loop to finish the batches in hand, commit them and return (signal-safe)."""
        self._stop = True

    @property
    def stopping(self) -> bool:
        return self._stop

    def run(self) -> IngestStats:
        started = last_message = time.monotonic()
        self.stats = IngestStats()
        writer: BatchWriter[DecodedBatch, WriteResult] = BatchWriter(
            self._write, depth=self.pipeline_depth
        )
        self._writer = writer
        self._listen_for_rebalance()
        try:
            while not self._stop:
                self._commit_done(writer.completed())
                limit = self.batch_size
                if self.max_events is not None:
                    limit = min(limit, self.max_events - self.stats.consumed)
                    if limit <= 0:
                        break
                records = self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=limit)
                self._measure_lag()
                if not records:
                    # the idle clock runs only once we own partitions: joining is not idling
                    joining = not self.consumer.assignment()
                    if joining and time.monotonic() - started < self.join_grace_s:
                        last_message = time.monotonic()
                    if (
                        self.idle_exit_s is not None
                        and not writer.in_flight
                        and time.monotonic() - last_message >= self.idle_exit_s
                    ):
                        log.info("no message for %.1fs, exiting", self.idle_exit_s)
                        break
                    continue
                last_message = time.monotonic()
                batch = decode_records(records)
                self.stats.consumed += batch.size
                writer.submit(batch)
            self._measure_lag(force=True)  # the lag at exit, whenever the last one was taken
            self._flush(writer)
        except Stopped:
            log.warning("stopped while the database was down; uncommitted batches are redelivered")
        finally:
            self._writer = None
            writer.close()
        self.stats.finished = time.monotonic()
        return self.stats

    def _measure_lag(self, *, force: bool = False) -> None:
        if self._lag is None:
            return
        lags = self._lag.measure(force=force)
        if lags is None:
            return
        self.stats.lag = sum(lags.values())
        if self.on_lag is not None:
            self.on_lag(lags)

    def _flush(self, writer: BatchWriter[DecodedBatch, WriteResult]) -> None:
        """Commit what the writer finished; then re-raise its failure, if it had one."""
        self._commit_done(writer.drain())
        self._commit_done(writer.drain())

    def _listen_for_rebalance(self) -> None:
        subscription = getattr(self.consumer, "subscription", lambda: None)()
        # re-subscribing after a join would force a rebalance (which the local broker can
        # wedge on), so the listener is attached only before the first poll
        if subscription and not self.consumer.assignment():
            self.consumer.subscribe(topics=sorted(subscription), listener=_DrainOnRevoke(self))

    def _write(self, batch: DecodedBatch) -> WriteResult:
        """Writer thread: one transaction, dead-letter forwarding, then the update hook."""
        result = self.retry.call(
            lambda: self.store.write_batch(
                batch.events, batch.dead_letters, offsets=batch.sources
            ),
            should_stop=lambda: self._stop,
        )
        if batch.dead_letters and self.dead_letter_producer is not None:
            for d in batch.dead_letters:
                source = f"{d.topic}/{d.partition}/{d.offset}".encode()
                headers = [("error", d.error.encode()), ("source", source)]
                self.dead_letter_producer.send_raw(d.raw, headers=headers)
            self.dead_letter_producer.flush()
        if self.on_batch is not None:
            self.on_batch(result)
        return result

    def _commit_done(self, done: list[tuple[DecodedBatch, WriteResult]]) -> None:
        if not done:
            return
        offsets: dict[TopicPartition, int] = {}
        for batch, result in done:
            self.stats.stored += result.stored
            self.stats.duplicates += result.duplicates
            self.stats.dead_letters += result.dead_letters
            self.stats.batches += 1
            offsets.update(batch.next_offsets)  # later batches carry higher offsets
        self._commit(offsets)

    def _commit(self, next_offsets: dict[TopicPartition, int]) -> None:
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in next_offsets.items()}
        try:
            self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # the group rebalanced under us: another member will get these records again,
            # and the store's event_id uniqueness turns that redelivery into duplicates
            log.warning("offset commit failed (%s); the batch will be redelivered", exc)


class _DrainOnRevoke(ConsumerRebalanceListener):
    """Before partitions move to another member, finish and commit what we hold of them."""

    def __init__(self, loop: IngestLoop) -> None:
        self.loop = loop

    def on_partitions_revoked(self, revoked: object) -> None:
        writer = self.loop._writer
        if writer is not None and writer.in_flight:
            # on Stopped nothing is committed for the failed batch; it is redelivered
            with contextlib.suppress(Stopped):
                self.loop._commit_done(writer.drain())

    def on_partitions_assigned(self, assigned: object) -> None:
        pass
