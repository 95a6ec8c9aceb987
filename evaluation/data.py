"""Evaluation inputs: an interaction file (the loaders `streamrec produce` uses) or the store,
as an :class:`~models.base.InteractionGraph` with dense indices in order of first appearance."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.base import InteractionGraph
from models.trend.content import ItemContent
from stream.events import Event
from stream.item_metadata import normalise_id, read_items
from stream.sources import ColumnMap, ReadStats, read_events


@dataclass
class LoadedData:
    """A graph plus where it came from: ids by dense index and the read statistics."""

    graph: InteractionGraph
    user_ids: list[str]
    item_ids: list[str]
    name: str
    rejected: int = 0


def graph_from_events(events: Iterable[Event]) -> tuple[InteractionGraph, list[str], list[str]]:
    """Index users and items by first appearance in time order; one edge per event.

    >>> g, users, items = graph_from_events([Event.create("b", "x", 2), Event.create("a", "x", 1)])
    >>> users, g.user.tolist(), g.ts.tolist()
    (['a', 'b'], [0, 1], [1.0, 2.0])
    """
    rows = sorted(events, key=lambda e: (e.ts, e.event_id))
    seen_ids: set[str] = set()
    unique = [e for e in rows if not (e.event_id in seen_ids or seen_ids.add(e.event_id))]
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    u = np.fromiter((users.setdefault(e.user_id, len(users)) for e in unique), np.int64)
    i = np.fromiter((items.setdefault(e.item_id, len(items)) for e in unique), np.int64)
    ts = np.fromiter((e.ts for e in unique), np.float64, len(unique))
    w = np.fromiter((e.weight for e in unique), np.float32, len(unique))
    graph = InteractionGraph(u, i, ts, w, len(users), len(items))
    return graph, list(users), list(items)


def sibling_item_file(ratings: str | Path) -> Path | None:
    """The items' metadata file beside a MovieLens / MovieTweetings ratings file, if there is
    one: ``ratings.dat`` -> ``movies.dat``, ``snap100K_ratings.dat`` ->
    ``snap100K_movies.dat``, ``ratings.csv`` -> ``movies.csv``, ``u.data`` -> ``u.item``.

    >>> sibling_item_file("/nowhere/ratings.dat") is None
    True
    """
    path = Path(ratings)
    if path.name == "u.data":
        candidate = path.with_name("u.item")
    elif "ratings" in path.name:
        candidate = path.with_name(path.name.replace("ratings", "movies"))
    else:
        return None
    return candidate if candidate.is_file() else None


def load_item_content(path: str | Path, item_ids: Sequence[str]) -> ItemContent:
    """The tags and release years of ``path`` (a :mod:`stream.item_metadata` file) for the
    items ``item_ids`` (by dense index); raises ValueError when no id matches."""
    records, _ = read_items(path)
    by_id = {normalise_id(r.item_id): r for r in records} | {r.item_id: r for r in records}
    found = [by_id.get(i, by_id.get(normalise_id(i))) for i in item_ids]
    if records and not any(found):
        raise ValueError(f"no item of {path} matches an item of the ratings (e.g. "
                         f"{records[0].item_id!r} vs {item_ids[0] if item_ids else None!r})")
    return ItemContent([r.tags if r else () for r in found],
                       [r.year if r else None for r in found])


def load_file(path: str | Path, fmt: str, columns: ColumnMap | None = None) -> LoadedData:
    """Read an interaction file; raises ValueError when it holds no valid event."""
    stats = ReadStats()
    graph, users, items = graph_from_events(read_events(path, fmt, columns=columns, stats=stats))
    if graph.num_edges == 0:
        first = f" (first problem: line {stats.errors[0][0]}: {stats.errors[0][1]})" \
            if stats.errors else ""
        raise ValueError(f"{path} holds no valid interaction with a timestamp{first}")
    return LoadedData(graph, users, items, Path(path).name, stats.rejected)
