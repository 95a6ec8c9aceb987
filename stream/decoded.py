"""One poll's records decoded: the events (with where each came from) and the dead letters."""

from __future__ import annotations

from dataclasses import dataclass, field

from kafka import TopicPartition

from store.graph import DeadLetter
from stream.events import Event, InvalidEvent, decode_event


@dataclass
class DecodedBatch:
    """One poll's records split into events (with their sources) and dead letters."""

    events: list[Event] = field(default_factory=list)
    sources: list[tuple[int, int]] = field(default_factory=list)
    origins: list[tuple[str, bytes | None]] = field(default_factory=list)
    """(topic, raw value) of each event, to dead-letter one the database rejects."""
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
                batch.origins.append((tp.topic, msg.value))
            except InvalidEvent as exc:
                batch.dead_letters.append(
                    DeadLetter(msg.value, exc.reason, tp.topic, tp.partition, msg.offset)
                )
        if messages:
            batch.next_offsets[tp] = messages[-1].offset + 1
            batch.size += len(messages)
    return batch
