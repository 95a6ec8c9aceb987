"""The SQL side of streamrec: graph store, embedding store and the ANN index over it."""

from store.ann import ItemIndex
from store.embedding_schema import (
    EmbeddingSnapshot,
    EmbeddingStoreError,
    NoActiveVersionError,
    OverlayDelta,
    UnknownVersionError,
    VersionInfo,
    VersionStateError,
)
from store.embeddings import EmbeddingStore
from store.engine import make_engine
from store.graph import DeadLetter, GraphStore, WriteResult

__all__ = [
    "DeadLetter",
    "EmbeddingSnapshot",
    "EmbeddingStore",
    "EmbeddingStoreError",
    "GraphStore",
    "ItemIndex",
    "NoActiveVersionError",
    "OverlayDelta",
    "UnknownVersionError",
    "VersionInfo",
    "VersionStateError",
    "WriteResult",
    "make_engine",
]
