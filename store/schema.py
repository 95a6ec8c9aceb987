"""Table definitions of the graph store (SQLAlchemy Core).

Names are plain so operators can inspect them with SQL: ``users`` and ``items`` map external
ids to stable dense indices (``idx``, assigned 0, 1, 2, ... in order of first appearance),
``interactions`` holds each event once (``event_id`` is unique), ``item_metadata`` each
item's tags and release year by external id, ``dead_letters`` holds every
message that could not be stored, with the reason. Times are epoch seconds (float).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from stream.events import MAX_ID_LENGTH

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY, not a BIGINT one.
_RowId = BigInteger().with_variant(Integer(), "sqlite")


def _node_table(name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("idx", Integer, primary_key=True, autoincrement=False),
        Column("external_id", String(MAX_ID_LENGTH), nullable=False, unique=True),
        Column("first_seen", Double, nullable=False, comment="epoch seconds"),
    )


users = _node_table("users")
items = _node_table("items")

interactions = Table(
    "interactions",
    metadata,
    Column("id", _RowId, primary_key=True, autoincrement=True),
    Column("event_id", String(MAX_ID_LENGTH), nullable=False, unique=True),
    Column("user_idx", Integer, nullable=False),
    Column("item_idx", Integer, nullable=False),
    Column("ts", Double, nullable=False, comment="event time, epoch seconds"),
    Column("event_type", String(MAX_ID_LENGTH), nullable=False),
    Column("weight", Double, nullable=False),
    Column("ingested_at", Double, nullable=False, comment="epoch seconds"),
    Column("kafka_partition", Integer, nullable=True),
    Column("kafka_offset", BigInteger, nullable=True),
    Index("ix_interactions_ts", "ts"),
    Index("ix_interactions_user_ts", "user_idx", "ts"),
    Index("ix_interactions_item_ts", "item_idx", "ts"),
)

item_metadata = Table(
    "item_metadata",
    metadata,
    Column("external_id", String(MAX_ID_LENGTH), primary_key=True),
    Column("year", Integer, nullable=True, comment="release year"),
    Column("tags", Text, nullable=False, comment="'|'-separated, e.g. genres"),
    Column("updated_at", Double, nullable=False, comment="epoch seconds"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", _RowId, primary_key=True, autoincrement=True),
    Column("raw", LargeBinary, nullable=True),
    Column("error", Text, nullable=False),
    Column("topic", String(255), nullable=False),
    Column("kafka_partition", Integer, nullable=False),
    Column("kafka_offset", BigInteger, nullable=False),
    Column("created_at", Double, nullable=False, comment="epoch seconds"),
    UniqueConstraint("topic", "kafka_partition", "kafka_offset", name="uq_dead_letters_source"),
)
