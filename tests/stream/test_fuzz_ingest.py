"""Fuzzed messages through the ingest loop on SQLite and PostgreSQL: arbitrary JSON values,
event-shaped objects with arbitrary Unicode (lone surrogates and NUL included) and raw bytes.
The loop stays up and every message ends up stored or dead-lettered, nothing else."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import TopicPartition

from store.graph import GraphStore
from stream.consumer import IngestLoop
from stream.events import InvalidEvent, decode_event
from tests.stream.test_consumer import ListConsumer

CHARS = st.one_of(
    st.characters(exclude_categories=()),  # any code point, surrogates included (rarely)
    st.characters(categories=["Cs"]),  # lone surrogates: valid JSON as \\ud800 escapes
    st.sampled_from(["\x00", "\U0001f600", "\u00e9", " ", "u"]),
)
TEXT = st.text(CHARS, max_size=12)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
TS = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.integers(min_value=10**300, max_value=10**400),  # beyond any float
    st.floats(),
    st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01T00:00:00", "1700000000"]),
    TEXT,
    JSON,
)
FIELD = st.one_of(TEXT, TEXT.filter(str.strip), JSON)
EVENT_LIKE = st.fixed_dictionaries(
    {"user_id": FIELD, "item_id": FIELD, "ts": TS},
    optional={"event_type": FIELD, "weight": st.one_of(st.floats(), st.integers(), JSON),
              "event_id": FIELD},
)


@pytest.fixture
def store(store_url):  # type: ignore[no-untyped-def]
    """One store per database for all the examples of a test."""
    graph = GraphStore(store_url)
    yield graph
    graph.engine.dispose()


@st.composite
def messages(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.sampled_from(["event", "event", "event", "json", "bytes", "none"]))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "none":
        return None
    value = draw(EVENT_LIKE) if kind == "event" else draw(JSON)
    ascii_only = draw(st.booleans())  # False writes lone surrogates as bytes: not UTF-8
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(values=st.lists(messages(), min_size=1, max_size=25), batch_size=st.integers(1, 8))
def test_every_fuzzed_message_is_stored_or_dead_lettered(store, values, batch_size) -> None:  # type: ignore[no-untyped-def]
    tp = TopicPartition(f"fuzz-{uuid.uuid4().hex[:8]}", 0)  # examples share one store
    consumer = ListConsumer(values, tp)
    stats = IngestLoop(consumer, store, batch_size=batch_size, idle_exit_s=0).run()
    assert stats.consumed == len(values)
    assert stats.stored + stats.duplicates + stats.dead_letters == len(values)
    assert consumer.commits and consumer.commits[-1] == {tp: len(values)}
    letters = store.dead_letter_rows(limit=10**6)
    dead = {r["kafka_offset"] for r in letters if r["topic"] == tp.topic}
    assert len(dead) == stats.dead_letters
    stored = store.event_ids()
    for offset, raw in enumerate(values):
        if offset in dead:
            continue
        try:
            event = decode_event(raw)
        except InvalidEvent as exc:
            raise AssertionError(f"offset {offset}: {exc}, but not dead-lettered") from exc
        assert event.event_id in stored, f"offset {offset} neither stored nor dead-lettered"

