"""The interaction event on the wire: parsing, validation and the deterministic event id.

An event is a UTF-8 JSON object (see ../shared/DESIGN.md)::

    {"user_id": str, "item_id": str, "ts": <epoch s | epoch ms | ISO-8601 with zone>,
     "event_type": str = "interaction", "weight": float > 0 = 1.0, "event_id": str?}

Every rejection raises :class:`InvalidEvent` with a specific, human-readable reason; the
consumer stores that reason beside the raw bytes in the dead-letter table. Text the stores
cannot hold is rejected here too: a NUL character (PostgreSQL text cannot contain it) and a
lone UTF-16 surrogate (valid JSON, ``"\\ud800"``, but not Unicode text, so no driver can
encode it).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from datetime import datetime

MAX_ID_LENGTH = 128
"""Longest accepted ``user_id``, ``item_id``, ``event_id`` and ``event_type`` (characters)."""

MS_THRESHOLD = 1e11
"""Numbers at or above this are epoch milliseconds, below it epoch seconds.

1e11 seconds is the year 5138 and 1e11 milliseconds is March 1973, so no real timestamp of
this century is ambiguous under this rule.
"""

MAX_EPOCH_MS = 1e14  # year 5138 in ms; larger numbers are microseconds or garbage
DEFAULT_EVENT_TYPE = "interaction"
#: the largest event weight: interaction graphs hold weights as float32
MAX_WEIGHT = 3.0e38


class InvalidEvent(ValueError):
    """A message that cannot become an :class:`Event`; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Event:
    """A validated interaction; ``ts`` is epoch **seconds** (float, UTC).

    >>> e = Event.create("u1", "i9", "2024-01-01T00:00:00Z")
    >>> e.ts, e.event_type, e.weight
    (1704067200.0, 'interaction', 1.0)
    >>> e.event_id == Event.create("u1", "i9", 1704067200000).event_id
    True
    """

    event_id: str
    user_id: str
    item_id: str
    ts: float
    event_type: str = DEFAULT_EVENT_TYPE
    weight: float = 1.0

    @classmethod
    def create(
        cls,
        user_id: str,
        item_id: str,
        ts: object,
        event_type: str = DEFAULT_EVENT_TYPE,
        weight: float = 1.0,
        event_id: str | None = None,
    ) -> Event:
        """Validate fields and derive ``event_id`` from the content when it is absent."""
        fields: dict[str, object] = {
            "user_id": user_id,
            "item_id": item_id,
            "ts": ts,
            "event_type": event_type,
            "weight": weight,
        }
        if event_id is not None:
            fields["event_id"] = event_id
        return event_from_dict(fields)

    def to_dict(self) -> dict[str, object]:
        """The wire form (``ts`` in epoch seconds)."""
        return asdict(self)

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


def parse_timestamp(value: object) -> float:
    """Epoch seconds from epoch seconds, epoch milliseconds or an ISO-8601 string with zone.

    >>> parse_timestamp(1700000000), parse_timestamp(1700000000123)
    (1700000000.0, 1700000000.123)
    >>> parse_timestamp("2023-11-14T22:13:20+00:00")
    1700000000.0
    """
    if isinstance(value, bool):
        raise InvalidEvent("field 'ts' must be a number or an ISO-8601 string, got bool")
    if isinstance(value, int | float):
        number = _to_float(value, "ts")
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return _parse_iso(text)
    else:
        raise InvalidEvent(
            f"field 'ts' must be a number or an ISO-8601 string, got {type(value).__name__}"
        )
    if not math.isfinite(number) or number < 0:
        raise InvalidEvent(f"field 'ts' must be a non-negative finite epoch time, got {value!r}")
    if number >= MAX_EPOCH_MS:
        raise InvalidEvent(
            f"field 'ts' {value!r} is too large for epoch seconds or milliseconds "
            "(microseconds are not accepted)"
        )
    return number / 1000.0 if number >= MS_THRESHOLD else number


def _to_float(value: int | float, name: str) -> float:
    try:
        return float(value)
    except OverflowError:  # a JSON integer beyond any float
        raise InvalidEvent(f"field '{name}' is too large: {str(value)[:32]}...") from None


def _parse_iso(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidEvent(f"field 'ts' is not epoch time or ISO-8601: {text[:64]!r}") from None
    if moment.tzinfo is None:
        raise InvalidEvent(
            f"field 'ts' ISO-8601 timestamp {text[:64]!r} has no time zone; add 'Z' or '+00:00'"
        )
    return moment.timestamp()


def derive_event_id(user_id: str, item_id: str, ts: float, event_type: str, weight: float) -> str:
    """A content hash: the same event replayed (even with ts in ms) gets the same id."""
    key = "\x1f".join((user_id, item_id, repr(float(ts)), event_type, repr(float(weight))))
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def _text_field(data: dict[str, object], name: str, *, required: bool) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidEvent(f"missing field '{name}'")
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"field '{name}' must be a string, got {type(value).__name__}")
    if not value or not value.strip():
        raise InvalidEvent(f"field '{name}' is empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidEvent(f"field '{name}' is longer than {MAX_ID_LENGTH} characters")
    check_storable(value, name)
    return value


def check_storable(value: str, name: str) -> None:
    r"""Raise :class:`InvalidEvent` unless every store can hold ``value`` as text.

    >>> check_storable("caf\u00e9", "user_id")
    >>> check_storable("u\x00x", "user_id")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    stream.events.InvalidEvent: field 'user_id' contains a NUL character (U+0000) at position 1...
    """
    if "\x00" in value:
        raise InvalidEvent(
            f"field '{name}' contains a NUL character (U+0000) at position "
            f"{value.index(chr(0))}, which PostgreSQL text cannot hold"
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidEvent(
                f"field '{name}' contains a lone UTF-16 surrogate U+{ord(value[exc.start]):04X} "
                f"at position {exc.start}: not Unicode text (a JSON \\u escape without its pair)"
            ) from None


def event_from_dict(data: object) -> Event:
    """Validate a decoded JSON value into an :class:`Event` or raise :class:`InvalidEvent`."""
    if not isinstance(data, dict):
        raise InvalidEvent(f"event must be a JSON object, got {type(data).__name__}")
    user_id = _text_field(data, "user_id", required=True)
    item_id = _text_field(data, "item_id", required=True)
    if "ts" not in data or data["ts"] is None:
        raise InvalidEvent("missing field 'ts'")
    ts = parse_timestamp(data["ts"])
    event_type = _text_field(data, "event_type", required=False) or DEFAULT_EVENT_TYPE
    raw_weight = data.get("weight", 1.0)
    if raw_weight is None:
        raw_weight = 1.0
    if isinstance(raw_weight, bool) or not isinstance(raw_weight, int | float):
        raise InvalidEvent(f"field 'weight' must be a number, got {type(raw_weight).__name__}")
    weight = _to_float(raw_weight, "weight")
    if not math.isfinite(weight) or weight <= 0:
        raise InvalidEvent(f"field 'weight' must be a finite number > 0, got {raw_weight!r}")
    if weight > MAX_WEIGHT:  # graphs carry weights as float32: a larger one would be inf
        raise InvalidEvent(f"field 'weight' must be at most {MAX_WEIGHT:g}, got {raw_weight!r}")
    assert user_id is not None and item_id is not None  # required=True guarantees it
    event_id = _text_field(data, "event_id", required=False) or derive_event_id(
        user_id, item_id, ts, event_type, weight
    )
    return Event(event_id, user_id, item_id, ts, event_type, weight)


def decode_event(raw: bytes | None) -> Event:
    """Parse one Kafka message value (UTF-8 JSON) into an :class:`Event`.

    >>> decode_event(b'{"user_id": "u", "item_id": "i", "ts": 5}').ts
    5.0
    >>> decode_event(b'{"user_id": "u", "item_id": "i", "ts": 5, "weight": 0}')
    Traceback (most recent call last):
    ...
    stream.events.InvalidEvent: field 'weight' must be a finite number > 0, got 0
    """
    if raw is None:
        raise InvalidEvent("message has no value (tombstone)")
    try:
        # decode explicitly: json.loads(bytes) would guess UTF-16/32 from a BOM
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"message is not UTF-8: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"message is not valid JSON: {exc.msg} at char {exc.pos}") from None
    except RecursionError:
        raise InvalidEvent("message is JSON nested too deeply to parse") from None
    return event_from_dict(data)
