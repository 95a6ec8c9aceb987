"""What the ingest loop does when the consumer group rebalances: finish, then commit, then let go.

kafka-python 3 runs rebalance listeners on its IO thread, while the consumer thread waits
inside ``poll()`` (or ``close()``) for the join to finish. A blocking consumer call there, such
as ``commit()``, raises ``RuntimeError: Cannot block on net.run() from the IO thread itself``
and the member never completes the join. So the listener here is an
:class:`~kafka.AsyncConsumerRebalanceListener`: it awaits ``commit_async()``, whose future
resolves on that same IO loop, and the only thing it waits for synchronously is the writer
thread finishing the batches already handed to it, for at most ``drain_timeout_s``.

Order on a revoke: the writer's database commits -> the offset commit (awaited) -> the
JoinGroup that gives the partitions away. A batch the writer has not finished in time stays
in flight; its offsets are committed later only if its partition is still ours (see
:meth:`stream.consumer.IngestLoop`), otherwise the new owner gets those records again and the
store counts them as duplicates. Nothing is committed before its batch is in the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

log = logging.getLogger(__name__)

Settle = Callable[[float], dict[TopicPartition, int]]
"""Wait up to the given seconds for the writer; return the next offsets of what it stored."""


def offset_metadata(
    next_offsets: dict[TopicPartition, int],
) -> dict[TopicPartition, OffsetAndMetadata]:
    """The commit form of "next offset to read" per partition (no metadata, no leader epoch)."""
    return {tp: OffsetAndMetadata(off, "", -1) for tp, off in next_offsets.items()}


class DrainOnRevoke(AsyncConsumerRebalanceListener):
    """Before partitions move to another member, store and commit what we hold of them.

    Args:
        consumer: the consumer the listener is subscribed with.
        settle: called on kafka-python's IO thread while the consumer thread is inside
            ``poll()``/``close()``, so it may touch state the consumer thread owns.
        drain_timeout_s: most seconds to wait for batches being written (default 3); it
            blocks the IO loop, so keep it well below the session timeout (>= 6 s).
    """

    def __init__(
        self, consumer: KafkaConsumer, settle: Settle, *, drain_timeout_s: float = 3.0
    ) -> None:
        self.consumer = consumer
        self.settle = settle
        self.drain_timeout_s = drain_timeout_s
        self.commits = 0
        """Offset commits this listener made (for tests and logs)."""

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:
            return  # the first join of a member: nothing held yet
        next_offsets = self.settle(self.drain_timeout_s)
        if not next_offsets:
            return
        try:
            await self.consumer.commit_async(offset_metadata(next_offsets))
        except KafkaError as exc:
            log.warning(
                "offset commit before the rebalance failed (%s); the new owner of those "
                "partitions re-reads the last batches and the store counts them as duplicates",
                exc,
            )
            return
        self.commits += 1
        log.info("committed %s before giving up %d partitions", next_offsets, len(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        # the group already gave these partitions to others, so a commit would be refused; the
        # batches in hand are still stored, and their records redelivered to the new owner
        log.warning(
            "lost partitions %s (session expired); their last batches will be redelivered",
            sorted(tp.partition for tp in lost),
        )
