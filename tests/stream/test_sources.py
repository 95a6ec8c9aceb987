"""File sources: the three MovieLens layouts (by content), CSV and JSONL with mappings."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.sources import ColumnMap, ReadStats, read_events


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n"),
        ("ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n"),
        ("ratings.csv",
         "userId,movieId,rating,timestamp\n1,1193,5.0,978300760\n1,661,3,978302109\n"),
        ("anything.txt", "1::1193::5::978300760\n1::661::3::978302109\n"),  # content, not name
    ],
)
def test_movielens_layouts(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    events = list(read_events(path, "movielens"))
    assert len(events) == 2
    assert all(e.event_type == "rating" and e.ts > 8e8 for e in events)
    assert [e.event_id for e in events] == [e.event_id for e in read_events(path, "movielens")]


def test_movielens_bad_lines_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text("1::2::3::978300760\n1::2\n1::3::4::-5\n")
    stats = ReadStats()
    events = list(read_events(path, "movielens", stats=stats))
    assert len(events) == 1 and stats.rejected == 2
    assert [line for line, _ in stats.errors] == [2, 3]


def test_not_movielens(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b,c\n")
    with pytest.raises(ValueError, match="not a MovieLens"):
        list(read_events(path, "movielens"))


def test_csv_with_column_map(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("who,what,when,w\nalice,book,2024-01-01T00:00:00Z,2\nbob,pen,1704067200,x\n")
    stats = ReadStats()
    cols = ColumnMap(user_id="who", item_id="what", ts="when", weight="w")
    events = list(read_events(path, "csv", columns=cols, stats=stats))
    assert [(e.user_id, e.item_id, e.weight) for e in events] == [("alice", "book", 2.0)]
    assert stats.rejected == 1 and "not a number" in stats.errors[0][1]


def test_csv_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="lacks column"):
        list(read_events(path, "csv"))


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"u": "a", "i": "b", "t": 5}\n\nnot json\n[1]\n')
    stats = ReadStats()
    events = list(read_events(path, "jsonl", columns=ColumnMap("u", "i", "t"), stats=stats))
    assert len(events) == 1 and stats.rejected == 2


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(read_events(tmp_path / "nope", "csv"))
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="unknown format"):
        list(read_events(tmp_path / "f", "xml"))
