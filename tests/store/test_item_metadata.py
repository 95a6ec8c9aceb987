"""Items' metadata in the store (SQLite file and PostgreSQL): imports replace by id, reads
align with the items' dense indices, and items stored later extend a read content."""

from __future__ import annotations

import numpy as np

from store.graph import GraphStore
from store.item_metadata import ItemMetadata
from stream.events import Event
from stream.item_metadata import ItemRecord


def test_metadata_aligns_with_dense_indices_and_extends(store_url: str) -> None:
    graph = GraphStore(store_url)
    try:
        meta = ItemMetadata(graph)
        assert meta.content() is None                     # nothing imported: no content
        graph.write_batch([Event.create("u", "a", 1.0), Event.create("u", "b", 2.0)])
        assert meta.write([ItemRecord("b", 2001, ("Drama", "War")),
                           ItemRecord("z", 1990, ("Comedy",))]) == 2
        assert meta.write([ItemRecord("b", 2002, ("Drama",))]) == 1    # replaces by id
        assert meta.count() == 2
        content = meta.content()
        assert content is not None and content.num_items == 2
        assert content.vocabulary == ("Comedy", "Drama")  # z has no events but its tag counts
        np.testing.assert_allclose(content.tag_weights.toarray(), [[0, 0], [0, 1]])
        assert np.isnan(content.years[0]) and content.years[1] == 2002
        graph.write_batch([Event.create("v", "z", 3.0), Event.create("v", "c", 4.0)])
        wider = meta.extend(content)                      # z arrived: its content comes along
        assert wider.num_items == 4 and wider.vocabulary == content.vocabulary
        np.testing.assert_allclose(wider.tag_weights.toarray()[2:], [[1, 0], [0, 0]])
        assert wider.years[2] == 1990 and meta.extend(wider).num_items == 4
        many = [ItemRecord(f"m{i}", 2000, ("x",)) for i in range(12_000)]  # > one statement
        assert meta.write(many) == 12_000 and meta.count() == 12_002
    finally:
        graph.engine.dispose()
