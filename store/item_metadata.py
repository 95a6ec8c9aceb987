"""Items' metadata in the store: tags and release year per external item id, imported from
a file (``streamrec items``) and read as :class:`~models.trend.content.ItemContent`
aligned with the items' dense indices.

Metadata is keyed by external id, so it may arrive before, after or without the item's
first event; an item gets its content from whichever row matches its id when a retrain
reads it (and the served ranker, for items first seen after that retrain).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from models.trend.content import ItemContent, top_tags
from store import schema
from store.graph import GraphStore
from stream.item_metadata import ItemRecord

#: rows per INSERT statement (SQLite allows 32,766 bound parameters per statement)
_ROWS_PER_STATEMENT = 5_000
#: separator of the stored tags (``stream.item_metadata`` splits on it, so no tag holds it)
_SEP = "|"


class ItemMetadata:
    """Reads and writes the ``item_metadata`` table of a graph store.

    >>> from stream.events import Event
    >>> store = GraphStore("sqlite://")
    >>> _ = store.write_batch([Event.create("u", "m1", 1.0), Event.create("u", "m2", 2.0)])
    >>> meta = ItemMetadata(store)
    >>> meta.write([ItemRecord("m2", 1999, ("Drama",)), ItemRecord("m9", None, ("War",))])
    2
    >>> c = meta.content()                                 # items m1, m2 by dense index
    >>> c.vocabulary, c.years.tolist()
    (('Drama', 'War'), [nan, 1999.0])
    """

    def __init__(self, graph: GraphStore) -> None:
        self.graph = graph

    def __repr__(self) -> str:
        return f"ItemMetadata({self.graph!r})"

    def write(self, records: Sequence[ItemRecord]) -> int:
        """Insert or replace ``records`` (by item id) in one transaction; returns how many."""
        now = time.time()
        rows = [{"external_id": r.item_id, "year": r.year, "tags": _SEP.join(r.tags),
                 "updated_at": now} for r in records]
        dialect = postgresql if self.graph.dialect == "postgresql" else sqlite
        table = schema.item_metadata
        with self.graph.engine.begin() as conn:
            for lo in range(0, len(rows), _ROWS_PER_STATEMENT):
                stmt = dialect.insert(table)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[table.c.external_id],
                    set_={"year": stmt.excluded.year, "tags": stmt.excluded.tags,
                          "updated_at": stmt.excluded.updated_at})
                conn.execute(stmt, rows[lo:lo + _ROWS_PER_STATEMENT])
        return len(rows)

    def count(self) -> int:
        """How many items have metadata (whether or not they have events)."""
        with self.graph.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(
                schema.item_metadata)).scalar_one())

    def rows(self, start: int = 0) -> tuple[list[tuple[str, ...]], list[int | None]]:
        """``(tags, years)`` of the stored items of dense index ``start, start + 1, ...``
        (every item the store indexes; those without metadata have none)."""
        items, meta = schema.items, schema.item_metadata
        stmt = (select(items.c.idx, meta.c.year, meta.c.tags)
                .select_from(items.outerjoin(meta, items.c.external_id == meta.c.external_id))
                .where(items.c.idx >= start).order_by(items.c.idx))
        tags: list[tuple[str, ...]] = []
        years: list[int | None] = []
        with self.graph.engine.connect() as conn:
            for idx, year, text in conn.execute(stmt):
                if idx != start + len(tags):
                    raise RuntimeError(f"the items table skips dense index {start + len(tags)}")
                tags.append(tuple(text.split(_SEP)) if text else ())
                years.append(year)
        return tags, years

    def content(self) -> ItemContent | None:
        """Every stored item's content, or ``None`` when no item has metadata. The
        vocabulary counts every row, items without events too, so that items arriving
        later find their tags in it."""
        with self.graph.engine.connect() as conn:
            every = [tuple(t.split(_SEP)) if t else () for t in conn.execute(
                select(schema.item_metadata.c.tags)).scalars()]
        if not every:
            return None
        tags, years = self.rows()
        return ItemContent(tags, years, vocabulary=top_tags(every))

    def extend(self, content: ItemContent) -> ItemContent:
        """``content`` grown by the items stored since it was read (its vocabulary kept)."""
        tags, years = self.rows(content.num_items)
        return content.extend(tags, years) if tags else content
