"""Poison messages: what the stores cannot hold is dead-lettered, the rest of the batch stored,
on SQLite and PostgreSQL; outages are still waited out and bugs still raised."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc

from store.graph import DeadLetter, GraphStore
from stream.consumer import IngestLoop
from stream.events import Event
from stream.poison import write_isolating
from tests.stream.test_consumer import TP, ListConsumer


def _good(k: int) -> Event:
    return Event.create(f"u{k}", f"i{k % 3}", 100 + k)


def test_poison_messages_do_not_wedge_ingest(store_url) -> None:  # type: ignore[no-untyped-def]
    values = [
        _good(0).to_json(),
        b'{"user_id": "u\\ud800x", "item_id": "i", "ts": 5}',  # valid JSON, not Unicode text
        _good(1).to_json(),
        b'{"user_id": "u\\u0000x", "item_id": "i", "ts": 5}',  # PostgreSQL text has no NUL
        b'{"user_id": "u", "item_id": "i", "ts": 5, "event_id": "e\\udc00"}',
        _good(2).to_json(),
    ]
    consumer = ListConsumer(values)
    store = GraphStore(store_url)
    stats = IngestLoop(consumer, store, batch_size=10, idle_exit_s=0).run()
    assert (stats.consumed, stats.stored, stats.dead_letters) == (6, 3, 3)
    assert consumer.commits[-1] == {TP: 6}
    rows = {row["kafka_offset"]: row for row in store.dead_letter_rows()}
    assert sorted(rows) == [1, 3, 4]
    assert "lone UTF-16 surrogate U+D800" in rows[1]["error"]
    assert "NUL character" in rows[3]["error"]
    assert "field 'event_id' contains a lone UTF-16 surrogate U+DC00" in rows[4]["error"]
    assert rows[1]["raw"] == values[1]
    store.engine.dispose()


# events that slipped past validation: the stores' own refusal must not wedge the batch
SURROGATE = Event("bad-surrogate", "u\ud800x", "i1", 7.0)
NUL = Event("bad-nul", "u\x00x", "i1", 8.0)


def _write(store: GraphStore):  # type: ignore[no-untyped-def]
    return lambda events, letters, sources: store.write_batch(events, letters, offsets=sources)


def _batch(events: list[Event]) -> tuple[list[tuple[int, int]], list[tuple[str, bytes]]]:
    sources = [(0, k) for k in range(len(events))]
    origins = [("events", f"raw-{e.event_id}".encode()) for e in events]
    return sources, origins


def test_rows_the_database_rejects_are_split_out_and_dead_lettered(store_url) -> None:  # type: ignore[no-untyped-def]
    store = GraphStore(store_url)
    poison = [SURROGATE, NUL] if store.dialect == "postgresql" else [SURROGATE]
    events = [_good(k) for k in range(6)]
    events[1:1] = poison[:1]
    events[5:5] = poison[1:]
    decoded = DeadLetter(b"nope", "message is not valid JSON", "events", 0, 99)
    sources, origins = _batch(events)
    result, rejected = write_isolating(_write(store), events, [decoded], sources, origins)
    assert result.stored == 6 == store.counts()["interactions"]
    assert result.dead_letters == 1 + len(poison) and len(result.user) == 6
    assert store.event_ids() == {e.event_id for e in events} - {e.event_id for e in poison}
    assert {d.raw for d in rejected} == {f"raw-{e.event_id}".encode() for e in poison}
    rows = {row["kafka_offset"]: row for row in store.dead_letter_rows()}
    assert len(rows) == 1 + len(poison) and rows[99]["raw"] == b"nope"
    for d in rejected:
        assert rows[d.offset]["error"].startswith("the database rejected this event:")
    store.engine.dispose()


def test_an_outage_while_splitting_is_waited_out_not_dead_lettered(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from stream.retry import RetryPolicy

    store = GraphStore(f"sqlite:///{tmp_path / 's.db'}")
    events = [_good(0), SURROGATE, _good(1), _good(2)]
    sources, origins = _batch(events)
    retry = RetryPolicy(initial_s=0.01, max_delay_s=0.02)
    calls = 0

    def write(evs, letters, srcs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls in (2, 3):  # the database goes away just as the split starts
            raise sa_exc.OperationalError("INSERT", {}, ConnectionError("server closed"))
        return store.write_batch(evs, letters, offsets=srcs)

    result, rejected = write_isolating(
        lambda e, d, s: retry.call(lambda: write(e, d, s)), events, [], sources, origins
    )
    assert result.stored == 3 and [d.offset for d in rejected] == [1]
    assert store.counts()["dead_letters"] == 1
    store.engine.dispose()


def test_errors_that_are_neither_content_nor_outage_still_raise() -> None:
    def broken(events, letters, sources):  # type: ignore[no-untyped-def]
        raise sa_exc.ProgrammingError("INSERT", {}, Exception("no such column: weight"))

    sources, origins = _batch([_good(0), _good(1)])
    with pytest.raises(sa_exc.ProgrammingError):
        write_isolating(broken, [_good(0), _good(1)], [], sources, origins)
