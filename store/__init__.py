"""The SQL side of streamrec: graph store, embedding store and the ANN index over it."""

from store.engine import make_engine
from store.graph import DeadLetter, GraphStore, WriteResult

__all__ = ["DeadLetter", "GraphStore", "WriteResult", "make_engine"]
