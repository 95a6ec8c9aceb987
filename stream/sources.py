"""Events from files: the three MovieLens rating files, generic CSV and JSONL.

The MovieLens flavour is recognised from the content, not the name: ``u.data`` is
tab-separated, ``ratings.dat`` (and MovieTweetings) is ``::``-separated, ``ratings.csv`` has
a ``userId,movieId,rating,timestamp`` header. Ratings become implicit interactions
(``event_type="rating"``, weight 1.0); the event id is derived from the content, so reading
the same file twice yields the same ids.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from stream.events import Event, InvalidEvent, event_from_dict

FORMATS = ("movielens", "csv", "jsonl")


@dataclass
class ColumnMap:
    """Which input column holds each event field (CSV and JSONL); None = not present."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    ts: str = "ts"
    event_type: str | None = "event_type"
    weight: str | None = "weight"
    event_id: str | None = "event_id"

    def apply(self, row: dict[str, object]) -> dict[str, object]:
        out: dict[str, object] = {}
        for name in ("user_id", "item_id", "ts", "event_type", "weight", "event_id"):
            column = getattr(self, name)
            if column is not None and column in row and row[column] not in ("", None):
                out[name] = row[column]
        return out


@dataclass
class ReadStats:
    """Counts of a file read; ``errors`` keeps the first few (line, reason) pairs."""

    lines: int = 0
    events: int = 0
    rejected: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)

    def reject(self, line: int, reason: str) -> None:
        self.rejected += 1
        if len(self.errors) < 20:
            self.errors.append((line, reason))


def sniff_movielens(first_line: str) -> str:
    """Which MovieLens flavour a file is, from its first line.

    >>> sniff_movielens("196\\t242\\t3\\t881250949"), sniff_movielens("1::1193::5::978300760")
    ('u.data', 'ratings.dat')
    >>> sniff_movielens("userId,movieId,rating,timestamp")
    'ratings.csv'
    """
    if "::" in first_line:
        return "ratings.dat"
    if "\t" in first_line:
        return "u.data"
    if first_line.lower().startswith("userid,"):
        return "ratings.csv"
    raise ValueError(
        f"not a MovieLens ratings file (u.data, ratings.dat or ratings.csv): {first_line[:80]!r}"
    )


def _movielens_rows(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    with path.open(encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
        flavour = sniff_movielens(first)
        if flavour != "ratings.csv":
            fh.seek(0)
        sep = {"u.data": "\t", "ratings.dat": "::", "ratings.csv": ","}[flavour]
        start = 2 if flavour == "ratings.csv" else 1
        for lineno, line in enumerate(fh, start=start):
            parts = line.rstrip("\r\n").split(sep)
            if len(parts) < 4:
                yield lineno, {"_error": f"expected 4 fields separated by {sep!r}"}
                continue
            ts: object = parts[3].strip()
            yield lineno, {
                "user_id": parts[0].strip(),
                "item_id": parts[1].strip(),
                "ts": ts,
                "event_type": "rating",
            }


def _csv_rows(path: Path, columns: ColumnMap) -> Iterator[tuple[int, dict[str, object]]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {columns.user_id, columns.item_id, columns.ts} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"{path}: CSV header lacks column(s) {sorted(missing)}; "
                f"found {reader.fieldnames}. Map them with --user-col/--item-col/--ts-col."
            )
        for lineno, row in enumerate(reader, start=2):
            mapped = columns.apply(dict(row))
            if "weight" in mapped:
                try:
                    mapped["weight"] = float(str(mapped["weight"]))
                except ValueError:
                    yield lineno, {"_error": f"weight {mapped['weight']!r} is not a number"}
                    continue
            yield lineno, mapped


def _jsonl_rows(path: Path, columns: ColumnMap) -> Iterator[tuple[int, dict[str, object]]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, {"_error": f"not valid JSON: {exc.msg}"}
                continue
            if not isinstance(row, dict):
                yield lineno, {"_error": "line is not a JSON object"}
                continue
            yield lineno, columns.apply(row)


def read_events(
    path: str | Path,
    fmt: str = "movielens",
    *,
    columns: ColumnMap | None = None,
    stats: ReadStats | None = None,
    on_reject: Callable[[int, str], None] | None = None,
) -> Iterator[Event]:
    """Yield validated events from a file; invalid lines are counted in ``stats``, not raised.

    Args:
        path: the file.
        fmt: ``"movielens"``, ``"csv"`` or ``"jsonl"``.
        columns: column mapping for CSV/JSONL (default: the wire field names).
        stats: filled with line, event and rejection counts.
        on_reject: called with ``(line_number, reason)`` for each rejected line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    columns = columns or ColumnMap()
    stats = stats if stats is not None else ReadStats()
    if fmt == "movielens":
        rows = _movielens_rows(path)
    elif fmt == "csv":
        rows = _csv_rows(path, columns)
    else:
        rows = _jsonl_rows(path, columns)
    for lineno, row in rows:
        stats.lines += 1
        try:
            if "_error" in row:
                raise InvalidEvent(str(row["_error"]))
            event = event_from_dict(row)
        except InvalidEvent as exc:
            stats.reject(lineno, exc.reason)
            if on_reject is not None:
                on_reject(lineno, exc.reason)
            continue
        stats.events += 1
        yield event
