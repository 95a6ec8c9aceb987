"""Event parsing and validation: every accepted form, every rejection reason."""

from __future__ import annotations

import json
import re

import pytest

from stream.events import Event, InvalidEvent, decode_event, parse_timestamp


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_700_000_000, 1_700_000_000.0),
        (1_700_000_000.5, 1_700_000_000.5),
        (1_700_000_000_250, 1_700_000_000.25),  # milliseconds
        ("1700000000", 1_700_000_000.0),
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000.0),
        (99_999_999_999, 99_999_999_999.0),  # just below the ms threshold: seconds
        (100_000_000_000, 100_000_000.0),  # at the threshold: milliseconds
    ],
)
def test_timestamps(value: object, expected: float) -> None:
    assert parse_timestamp(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-1, "non-negative"),
        (float("nan"), "finite"),
        (10**15, "too large"),
        (True, "got bool"),
        ([1], "got list"),
        ("soon", "not epoch time or ISO-8601"),
        ("2024-01-01T00:00:00", "no time zone"),
    ],
)
def test_bad_timestamps(value: object, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        parse_timestamp(value)


def _raw(**fields: object) -> bytes:
    base: dict[str, object] = {"user_id": "u", "item_id": "i", "ts": 1}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "not valid JSON"),
        (b"\xc3\x28", "not UTF-8"),
        (b"42", "must be a JSON object, got int"),
        (None, "tombstone"),
        (_raw(user_id=...), "missing field 'user_id'"),
        (_raw(item_id=...), "missing field 'item_id'"),
        (_raw(ts=...), "missing field 'ts'"),
        (_raw(user_id=5), "field 'user_id' must be a string, got int"),
        (_raw(item_id=""), "field 'item_id' is empty"),
        (_raw(user_id="x" * 129), "longer than 128"),
        (_raw(weight=0), "must be a finite number > 0"),
        (_raw(weight="1"), "field 'weight' must be a number, got str"),
        (_raw(event_type=3), "field 'event_type' must be a string"),
        (_raw(event_id=""), "field 'event_id' is empty"),
        # valid JSON that no store can hold as text
        (b'{"user_id": "u\\ud800x", "item_id": "i", "ts": 1}', "lone UTF-16 surrogate U+D800"),
        (_raw(item_id="i\udfff"), "field 'item_id' contains a lone UTF-16 surrogate U+DFFF"),
        (_raw(event_id="e\ud800", user_id="u"), "field 'event_id' contains a lone"),
        (_raw(user_id="u\u0000x"), "field 'user_id' contains a NUL character"),
        (_raw(event_type="\x00"), "field 'event_type' contains a NUL character"),
        (_raw(ts=10**400), "field 'ts' is too large"),
        (_raw(weight=10**400), "field 'weight' is too large"),
        (_raw(weight=1e39), "field 'weight' must be at most 3e+38"),  # float32 would be inf
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_rejections_have_specific_reasons(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=re.escape(reason)) as info:
        decode_event(raw)
    assert reason in info.value.reason


def test_defaults_and_given_event_id() -> None:
    e = decode_event(_raw(event_id="abc", weight=2.5))
    assert (e.event_id, e.event_type, e.weight) == ("abc", "interaction", 2.5)
    d = decode_event(_raw())
    assert d.event_type == "interaction" and d.weight == 1.0 and len(d.event_id) == 32


def test_derived_event_id_is_content_based() -> None:
    a = Event.create("u", "i", 1_700_000_000)
    assert a.event_id == Event.create("u", "i", "2023-11-14T22:13:20Z").event_id
    assert a.event_id != Event.create("u", "i", 1_700_000_001).event_id
    assert a.event_id != Event.create("u", "i", 1_700_000_000, weight=2.0).event_id
    assert a.event_id != Event.create("u", "i", 1_700_000_000, event_type="click").event_id


def test_round_trip_through_the_wire() -> None:
    e = Event.create("u1", "i1", 12.5, "click", 3.0)
    assert decode_event(e.to_json()) == e


def test_astral_characters_and_escaped_pairs_are_accepted() -> None:
    e = decode_event(b'{"user_id": "u\\ud83d\\ude00", "item_id": "caf\xc3\xa9", "ts": 1}')
    assert (e.user_id, e.item_id) == ("u\U0001f600", "caf\u00e9")
