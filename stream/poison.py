"""Poison isolation: when the database refuses a value of a batch, store the rest of it.

:func:`stream.events.decode_event` already rejects what the stores are known not to hold, so
this is the second line: any row the database (or its driver) rejects for its *content*
(:func:`stream.retry.is_rejected_content`) would otherwise fail every retry of its batch and
wedge ingest on the same offsets for good. The failed batch is bisected: each half is written
in its own transaction, a half that fails again is split again, and a single event that still
fails becomes a dead letter with the database's reason. With k bad rows among n that is
about 2k log2(n) writes, only on the failure path.

Outages are not content: the ``write`` callable given here retries them (waits, never skips)
and anything else (a bug) propagates as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from store.graph import DeadLetter, WriteResult
from stream.events import Event
from stream.retry import is_rejected_content

log = logging.getLogger(__name__)

Write = Callable[[Sequence[Event], Sequence[DeadLetter], Sequence[tuple[int, int]]], WriteResult]
"""``write(events, dead_letters, sources)``: one transaction (outages already retried)."""


def _reason(error: BaseException) -> str:
    first = str(error).splitlines()[0] if str(error) else ""
    return f"the database rejected this event: {type(error).__name__}: {first}"[:1000]


def merge_results(results: Sequence[WriteResult]) -> WriteResult:
    """One :class:`WriteResult` for several transactions of the same batch.

    >>> merge_results([WriteResult(stored=2, duplicates=1), WriteResult(dead_letters=1)])
    ... # doctest: +ELLIPSIS
    WriteResult(stored=2, duplicates=1, dead_letters=1, new_users=0, new_items=0, ...)
    """
    if len(results) == 1:
        return results[0]
    return WriteResult(
        stored=sum(r.stored for r in results),
        duplicates=sum(r.duplicates for r in results),
        dead_letters=sum(r.dead_letters for r in results),
        new_users=sum(r.new_users for r in results),
        new_items=sum(r.new_items for r in results),
        user=np.concatenate([r.user for r in results]),
        item=np.concatenate([r.item for r in results]),
        ts=np.concatenate([r.ts for r in results]),
        weight=np.concatenate([r.weight for r in results]),
    )


def write_isolating(
    write: Write,
    events: Sequence[Event],
    dead_letters: Sequence[DeadLetter],
    sources: Sequence[tuple[int, int]],
    origins: Sequence[tuple[str, bytes | None]],
) -> tuple[WriteResult, list[DeadLetter]]:
    """Write a decoded batch; rows the database rejects for their content become dead letters.

    Args:
        write: one transaction of events and dead letters; outages retried inside it.
        events: the batch's events; ``sources[n]`` is ``(partition, offset)`` of
            ``events[n]`` and ``origins[n]`` its ``(topic, raw message value)``.
        dead_letters: messages already rejected at decode time.

    Returns:
        what was stored, and the dead letters added for rejected rows (empty normally).

    Raises:
        Exception: anything that is not a content rejection, unchanged.
    """
    try:
        return write(events, dead_letters, sources), []
    except Exception as error:
        if not is_rejected_content(error) or not events:
            raise
        first_reason = _reason(error)
    log.warning("the database rejected a value in a batch of %d events (%s); splitting it",
                len(events), first_reason)
    results: list[WriteResult] = []
    rejected: list[DeadLetter] = []
    if dead_letters:
        results.append(write((), dead_letters, ()))

    def isolate(lo: int, hi: int, reason: str) -> None:
        if hi - lo == 1:
            topic, raw = origins[lo]
            partition, offset = sources[lo]
            letter = DeadLetter(raw, reason, topic, partition, offset)
            results.append(write((), [letter], ()))
            rejected.append(letter)
            return
        mid = (lo + hi) // 2
        for a, b in ((lo, mid), (mid, hi)):
            try:
                results.append(write(events[a:b], (), sources[a:b]))
            except Exception as error:
                if not is_rejected_content(error):
                    raise
                isolate(a, b, _reason(error))

    isolate(0, len(events), first_reason)
    for letter in rejected:
        log.warning("dead-lettered %s/%d/%d: %s", letter.topic, letter.partition, letter.offset,
                    letter.error)
    return merge_results(results), rejected
