"""Item metadata files: each item's tags (e.g. genres) and release year.

Formats, told apart by their first line:

* MovieLens / MovieTweetings ``movies.dat``: ``id::Title (year)::Genre|Genre``;
* MovieLens-100K ``u.item``: ``id|title|release date|video date|URL|`` then 19 genre flags
  (0/1, in the order of :data:`U_ITEM_GENRES`);
* CSV with a header: an id column (``item_id`` or MovieLens' ``movieId``), a year column
  (``year``) or a ``title`` ending in ``(year)``, and a tag column (``tags`` or
  ``genres``, ``|``-separated). MovieLens' ``movies.csv`` reads as it is.

In ``movies.dat`` all-digit ids lose their leading zeros (MovieTweetings pads movie ids to
seven digits there but not in ``ratings.dat``), so they match the ids of the rating files;
the other formats keep ids as written.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from stream.sources import ReadStats

_YEAR = re.compile(r"\((\d{4})\)\s*$")
#: MovieLens' marker for an item without genres
_NO_TAGS = {"(no genres listed)", ""}
#: plausible release years; anything else is treated as unknown
_YEARS = range(1800, 2200)


#: MovieLens-100K's genres, in the order of u.item's flag columns (its u.genre file)
U_ITEM_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy",
                 "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
                 "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


@dataclass(frozen=True)
class ItemRecord:
    """One item's metadata: its external id, release year (or ``None``) and tags."""

    item_id: str
    year: int | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)


def normalise_id(item_id: str) -> str:
    """``item_id`` stripped, without leading zeros when it is all digits.

    >>> normalise_id(" 0002844 "), normalise_id("tt0002844"), normalise_id("000")
    ('2844', 'tt0002844', '0')
    """
    item_id = item_id.strip()
    return str(int(item_id)) if item_id.isdigit() else item_id


def parse_year(text: str) -> int | None:
    """A year given alone (``"1999"``) or at the end of a title (``"Heat (1995)"``).

    >>> parse_year("Heat (1995)"), parse_year("2010"), parse_year("Untitled"), parse_year("")
    (1995, 2010, None, None)
    """
    text = text.strip()
    match = _YEAR.search(text)
    value = match.group(1) if match else (text if text.isdigit() else None)
    if value is None or int(value) not in _YEARS:
        return None
    return int(value)


def parse_tags(text: str) -> tuple[str, ...]:
    """``|``-separated tags, stripped, without duplicates or MovieLens' empty marker."""
    tags = [t.strip() for t in text.split("|")]
    return tuple(dict.fromkeys(t for t in tags if t not in _NO_TAGS))


def read_items(path: str | Path) -> tuple[list[ItemRecord], ReadStats]:
    """Every readable record of ``path`` and the read statistics (``events``: records read,
    ``rejected`` with reasons). A later record of the same id replaces an earlier one."""
    path = Path(path)
    stats = ReadStats()
    records: dict[str, ItemRecord] = {}
    for lineno, row in _rows(path):
        if isinstance(row, str):
            stats.reject(lineno, row)
            continue
        records[row.item_id] = row
        stats.events += 1
    return list(records.values()), stats


def _rows(path: Path) -> Iterator[tuple[int, ItemRecord | str]]:
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        first = fh.readline()
        fh.seek(0)
        if "::" in first:
            yield from _dat_rows(fh)
        elif _is_u_item(first):
            yield from _u_item_rows(fh)
        elif "," in first or first.strip():
            yield from _csv_rows(path, fh)


def _dat_rows(fh) -> Iterator[tuple[int, ItemRecord | str]]:  # type: ignore[no-untyped-def]
    for lineno, line in enumerate(fh, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) < 2 or not parts[0].strip():
            yield lineno, "expected id::title (year)::tags"
            continue
        tags = parse_tags(parts[2]) if len(parts) > 2 else ()
        yield lineno, ItemRecord(normalise_id(parts[0]), parse_year(parts[1]), tags)


def _is_u_item(line: str) -> bool:
    flags = line.rstrip("\r\n").split("|")[-len(U_ITEM_GENRES):]
    return line.count("|") >= 4 + len(U_ITEM_GENRES) and all(f in ("0", "1") for f in flags)


def _u_item_rows(fh) -> Iterator[tuple[int, ItemRecord | str]]:  # type: ignore[no-untyped-def]
    n = len(U_ITEM_GENRES)
    for lineno, line in enumerate(fh, start=1):
        parts = line.rstrip("\r\n").split("|")
        if not line.strip():
            continue
        if len(parts) < 5 + n or not parts[0].strip():
            yield lineno, f"expected id|title|release date|video date|URL and {n} genre flags"
            continue
        flags = parts[-n:]
        tags = tuple(g for g, f in zip(U_ITEM_GENRES, flags, strict=True)
                     if f == "1" and g != "unknown")
        year = parse_year(parts[2][-4:]) or parse_year(parts[1])  # "01-Jan-1995"
        yield lineno, ItemRecord(parts[0].strip(), year, tags)


def _csv_rows(path: Path, fh) -> Iterator[tuple[int, ItemRecord | str]]:  # type: ignore[no-untyped-def]
    reader = csv.DictReader(fh)
    names = {n.strip().lower(): n for n in reader.fieldnames or []}
    id_col = names.get("item_id") or names.get("movieid")
    year_col = names.get("year") or names.get("title")
    tag_col = names.get("tags") or names.get("genres")
    if id_col is None or (year_col is None and tag_col is None):
        raise ValueError(f"{path}: an item file needs an item_id (or movieId) column and a "
                         f"year, title, tags or genres column; found {reader.fieldnames}")
    for lineno, row in enumerate(reader, start=2):
        item_id = (row.get(id_col) or "").strip()
        if not item_id:
            yield lineno, f"no {id_col}"
            continue
        year = parse_year(row.get(year_col) or "") if year_col else None
        tags = parse_tags(row.get(tag_col) or "") if tag_col else ()
        yield lineno, ItemRecord(item_id, year, tags)
