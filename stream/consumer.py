"""The ingest loop: Kafka consumer group -> graph store, at-least-once, exactly-once in effect.

Order of a batch, which is what makes the delivery contract hold:

1. poll up to ``batch_size`` records (fewer when ``max_events`` is near);
2. decode each; a bad one becomes a dead letter (never raised, never dropped);
3. write events and dead letters in ONE database transaction (retried while the database
   is down, never skipped); duplicates are recognised by ``event_id``; a row the database
   rejects for its content is split out and dead-lettered (:mod:`stream.poison`);
4. forward dead letters to the dead-letter topic, if one is configured;
5. hand the stored events to ``on_batch`` (the incremental updater);
6. only then commit the offsets past the batch, explicitly, per partition.

A crash anywhere before 6 redelivers the batch; step 3 makes that harmless. Steps 3-5 run
on a writer thread (:class:`BatchWriter`) while the next poll happens, and step 6 runs on the
consumer thread once the writer reports the batch done; before partitions are revoked in a
rebalance, the writer is drained and its offsets committed (:mod:`stream.rebalance`). Offsets
are committed only for partitions the consumer still owns.

Consumer lag is measured by :class:`stream.lag.LagMeter`, at no cost to the broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import MemberState

from store.graph import DeadLetter, GraphStore, WriteResult
from stream.batch_writer import BatchWriter
from stream.decoded import DecodedBatch, decode_records
from stream.events import Event
from stream.lag import LagMeter
from stream.poison import write_isolating
from stream.producer import EventProducer
from stream.rebalance import DrainOnRevoke, offset_metadata
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
        session_timeout_ms=session_timeout_ms(max_poll_interval_ms),
        heartbeat_interval_ms=1_000,
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )


def session_timeout_ms(max_poll_interval_ms: int) -> int:
    """The session timeout :func:`make_consumer` uses: the poll interval within [6 s, 30 s].

    >>> session_timeout_ms(2_000), session_timeout_ms(300_000)
    (6000, 30000)
    """
    return max(6_000, min(max_poll_interval_ms, 30_000))


def join_timeout_s(max_poll_interval_ms: int) -> float:
    """Seconds a joining member may wait for its assignment before an idle run gives up.

    A member killed with SIGKILL stays in the group until its session expires, and each
    rebalance waits up to the poll interval for the members to rejoin, so a restart can take
    a session timeout plus two rebalances (measured on the bundled broker: 11 s with a 2 s
    poll interval, 54 s with the 30 s default).

    >>> join_timeout_s(2_000), join_timeout_s(30_000)
    (20.0, 100.0)
    """
    return (session_timeout_ms(max_poll_interval_ms) + 2 * max_poll_interval_ms) / 1000 + 10


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
        join_grace_s: how long an idle run waits while the consumer is (re)joining its group
            before the idle clock starts anyway (default 60; a join after a crash takes a
            session timeout and more, see :func:`join_timeout_s`).
        pipeline_depth: batches written on the writer thread while the next ones are fetched
            (default 2). Offsets are still committed only after each batch's DB commit.
        on_lag: called on the consumer thread with the lag (messages) by partition number,
            after a poll at most every ``lag_interval_s`` and once at the end of the run;
            only partitions already fetched from are in it (see :class:`LagMeter`).
        lag_interval_s: least seconds between two lag measurements (default 0.5).
        revoke_drain_s: most seconds a rebalance waits for batches being written before
            the partitions go (default 3; see :class:`~stream.rebalance.DrainOnRevoke`).
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
        revoke_drain_s: float = 3.0,
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
        self.revoke_drain_s = revoke_drain_s
        self.rebalance: DrainOnRevoke | None = None
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
        last_message = time.monotonic()
        joining_since: float | None = last_message
        ever_joined = False
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
                    # the idle clock runs only while we are in the group: joining is not idling
                    now = time.monotonic()
                    if self._in_group():
                        joining_since, ever_joined = None, True
                    else:
                        joining_since = joining_since or now
                        if now - joining_since < self.join_grace_s:
                            last_message = now
                    if (
                        self.idle_exit_s is not None
                        and not writer.in_flight
                        and now - last_message >= self.idle_exit_s
                    ):
                        if not ever_joined:
                            log.warning(
                                "exiting without ever joining the group in %.0fs: is another "
                                "member stuck in it? Raise join_grace_s or the idle exit",
                                self.join_grace_s,
                            )
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

    def _in_group(self) -> bool:
        """True while the consumer is a settled member of its group (possibly with no
        partitions: a group can have more members than partitions)."""
        group_metadata = getattr(self.consumer, "group_metadata", None)
        if group_metadata is None:  # in-memory test doubles
            return bool(self.consumer.assignment())
        return bool(group_metadata().state == MemberState.STABLE)

    def _listen_for_rebalance(self) -> None:
        subscription = getattr(self.consumer, "subscription", lambda: None)()
        # re-subscribing after a join would force a rebalance (which the local broker can
        # wedge on), so the listener is attached only before the first poll
        if subscription and not self.consumer.assignment():
            self.rebalance = DrainOnRevoke(
                self.consumer, self._settle, drain_timeout_s=self.revoke_drain_s
            )
            self.consumer.subscribe(topics=sorted(subscription), listener=self.rebalance)

    def _settle(self, timeout_s: float) -> dict[TopicPartition, int]:
        """Rebalance listener (IO thread, consumer thread parked in poll): wait up to
        ``timeout_s`` for the writer, account for what it stored; the offsets to commit."""
        writer = self._writer
        if writer is None or not writer.in_flight:
            return {}
        try:
            done = writer.drain(timeout_s)
        except Exception as exc:  # the writer keeps it; the consumer thread re-raises it
            log.warning("batch write failed during a rebalance (%s); nothing committed", exc)
            return {}
        if writer.in_flight:
            log.warning("%d batches still being written after %.1fs; their records go to "
                        "the partitions' next owner again", writer.in_flight, timeout_s)
        return self._account(done)

    def _write(self, batch: DecodedBatch) -> WriteResult:
        """Writer thread: one transaction, dead-letter forwarding, then the update hook."""

        def write(
            events: Sequence[Event],
            letters: Sequence[DeadLetter],
            sources: Sequence[tuple[int, int]],
        ) -> WriteResult:
            return self.retry.call(
                lambda: self.store.write_batch(events, letters, offsets=sources),
                should_stop=lambda: self._stop,
            )

        result, rejected = write_isolating(
            write, batch.events, batch.dead_letters, batch.sources, batch.origins
        )
        letters = [*batch.dead_letters, *rejected]
        if letters and self.dead_letter_producer is not None:
            for d in letters:
                source = f"{d.topic}/{d.partition}/{d.offset}".encode()
                # the reason may quote the poison itself: escape what UTF-8 cannot carry
                headers = [("error", d.error.encode("utf-8", "backslashreplace")),
                           ("source", source)]
                self.dead_letter_producer.send_raw(d.raw, headers=headers)
            self.dead_letter_producer.flush()
        if self.on_batch is not None:
            self.on_batch(result)
        return result

    def _commit_done(self, done: list[tuple[DecodedBatch, WriteResult]]) -> None:
        offsets = self._account(done)
        if offsets:
            self._commit(offsets)

    def _account(self, done: list[tuple[DecodedBatch, WriteResult]]) -> dict[TopicPartition, int]:
        """Add finished batches to the stats; their next offsets on partitions we still own
        (a batch finished after its partition moved must not move the new owner back)."""
        offsets: dict[TopicPartition, int] = {}
        for batch, result in done:
            self.stats.stored += result.stored
            self.stats.duplicates += result.duplicates
            self.stats.dead_letters += result.dead_letters
            self.stats.batches += 1
            offsets.update(batch.next_offsets)  # later batches carry higher offsets
        if offsets:
            owned = self.consumer.assignment()
            offsets = {tp: off for tp, off in offsets.items() if tp in owned}
        return offsets

    def _commit(self, next_offsets: dict[TopicPartition, int]) -> None:
        try:
            self.consumer.commit(offset_metadata(next_offsets))
        except (CommitFailedError, KafkaError) as exc:
            # the group rebalanced under us: another member will get these records again,
            # and the store's event_id uniqueness turns that redelivery into duplicates
            log.warning("offset commit failed (%s); the batch will be redelivered", exc)

