"""Tables of the embedding store and the Python types its reads return.

``embedding_versions`` holds one row per full retrain (the version ``v{id}``), its vectors
live in ``embedding_vectors`` (float32 little-endian bytes, one row per node),
``embedding_overlay`` holds the latest incremental vector of a node together with the base
version it was computed against, ``embedding_buffers`` the neighbour buffers of the events a
version saw (store/version_buffers.py), and ``embedding_active`` is a single-row pointer whose
update makes activation atomic. The tables share :data:`store.schema.metadata`, so every
``create_all`` of the store creates them. Times are epoch seconds (float).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Double,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    inspect,
    text,
)

from store.schema import metadata

KINDS = ("user", "item")
STATUSES = ("building", "ready", "active", "retired", "failed")
VECTOR_DTYPE = np.dtype("<f4")  # the on-disk layout of every stored vector

embedding_versions = Table(
    "embedding_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True, comment="shown as v{id}"),
    Column("model", String(64), nullable=False),
    Column("cutoff", Double, nullable=False, comment="training data ts <= cutoff, epoch s"),
    Column("hyper_parameters", Text, nullable=False, comment="JSON object"),
    Column("metrics", Text, nullable=False, comment="JSON object"),
    Column("created_at", Double, nullable=False, comment="epoch seconds"),
    Column("activated_at", Double, nullable=True, comment="epoch seconds, last activation"),
    Column("pruned_at", Double, nullable=True, comment="epoch seconds; vectors deleted"),
    Column("dim", Integer, nullable=False),
    Column("num_users", Integer, nullable=False),
    Column("num_items", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("updater_state", LargeBinary, nullable=True, comment="torch-serialised updater"),
    Column("ranker_state", LargeBinary, nullable=True,
           comment="the trend ranker's parameters and state over the events the base saw"),
    Column("ingest_seq", BigInteger, nullable=True,
           comment="the store's ingest sequence at the snapshot: interactions.id <= it seen"),
    CheckConstraint(
        "status IN ('building', 'ready', 'active', 'retired', 'failed')",
        name="ck_embedding_versions_status",
    ),
)

embedding_vectors = Table(
    "embedding_vectors",
    metadata,
    Column("version_id", Integer, ForeignKey("embedding_versions.id"), primary_key=True),
    Column("kind", String(8), primary_key=True, comment="'user' or 'item'"),
    Column("idx", Integer, primary_key=True, autoincrement=False, comment="dense index"),
    Column("vector", LargeBinary, nullable=False, comment="float32 little-endian [dim]"),
)

embedding_overlay = Table(
    "embedding_overlay",
    metadata,
    Column("kind", String(8), primary_key=True, comment="'user' or 'item'"),
    Column("idx", Integer, primary_key=True, autoincrement=False, comment="dense index"),
    Column("vector", LargeBinary, nullable=False, comment="float32 little-endian [dim]"),
    Column("updated_at", Double, nullable=False, comment="epoch seconds"),
    Column("base_version_id", Integer, ForeignKey("embedding_versions.id"), nullable=False),
    Index("ix_embedding_overlay_base_updated", "base_version_id", "updated_at"),
)

embedding_buffers = Table(
    "embedding_buffers",
    metadata,
    Column("version_id", Integer, ForeignKey("embedding_versions.id"), primary_key=True),
    Column("part", Integer, primary_key=True, autoincrement=False, comment="0, 1, 2, ..."),
    Column("data", LargeBinary, nullable=False,
           comment="a slice of NeighbourBuffer.to_bytes(); the parts in order are the whole"),
)

embedding_active = Table(
    "embedding_active",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version_id", Integer, ForeignKey("embedding_versions.id"), nullable=False),
    CheckConstraint("id = 1", name="ck_embedding_active_single_row"),
)


def upgrade(engine: Engine) -> None:
    """Add the columns newer than a store's tables (``embedding_versions.ingest_seq``,
    ``.ranker_state``);
    ``create_all`` creates missing tables only. A version without an ingest sequence is
    replayed by event time alone (see store/event_log.py)."""
    columns = {c["name"] for c in inspect(engine).get_columns("embedding_versions")}
    blob = "BYTEA" if engine.dialect.name == "postgresql" else "BLOB"
    for name, kind in (("ingest_seq", "BIGINT"), ("ranker_state", blob)):
        if name not in columns:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE embedding_versions ADD COLUMN {name} {kind}"))


class EmbeddingStoreError(RuntimeError):
    """Base class of the embedding store's domain errors."""


class UnknownVersionError(EmbeddingStoreError, LookupError):
    """The version id is not in ``embedding_versions``."""


class NoActiveVersionError(EmbeddingStoreError, LookupError):
    """No version has been activated yet (run a retrain first)."""


class VersionStateError(EmbeddingStoreError):
    """The version exists but its status forbids the operation (building, failed, pruned)."""


@dataclass(frozen=True)
class VersionInfo:
    """Metadata of one embedding version (one row of ``embedding_versions``, no blobs).

    ``pruned`` versions keep this row but their vectors and updater state are deleted.

    >>> VersionInfo(id=3, model="lightgcn", cutoff=0.0, dim=64).name
    'v3'
    """

    id: int
    model: str
    cutoff: float
    dim: int
    num_users: int = 0
    num_items: int = 0
    status: str = "building"
    created_at: float = 0.0
    activated_at: float | None = None
    pruned_at: float | None = None
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    has_updater_state: bool = False
    has_ranker_state: bool = False
    ingest_seq: int | None = None
    """The store's ingest sequence when the retrain took its snapshot: it trained on the
    events with ``interactions.id <= ingest_seq`` and ``ts <= cutoff`` (None: unknown)."""

    @property
    def name(self) -> str:
        return f"v{self.id}"

    @property
    def pruned(self) -> bool:
        return self.pruned_at is not None


def version_columns() -> list[Column]:
    """Every column of ``embedding_versions`` needed for :class:`VersionInfo`."""
    t = embedding_versions
    return [c for c in t.c if c.name not in ("updater_state", "ranker_state")] + [
        t.c.updater_state.is_not(None).label("has_updater_state"),
        t.c.ranker_state.is_not(None).label("has_ranker_state"),
    ]


def version_from_row(row: Any) -> VersionInfo:
    """A :class:`VersionInfo` from a row selected with :func:`version_columns`."""
    m = row._mapping
    return VersionInfo(
        id=int(m["id"]),
        model=m["model"],
        cutoff=float(m["cutoff"]),
        dim=int(m["dim"]),
        num_users=int(m["num_users"]),
        num_items=int(m["num_items"]),
        status=m["status"],
        created_at=float(m["created_at"]),
        activated_at=m["activated_at"],
        pruned_at=m["pruned_at"],
        hyper_parameters=json.loads(m["hyper_parameters"]),
        metrics=json.loads(m["metrics"]),
        has_updater_state=bool(m["has_updater_state"]),
        has_ranker_state=bool(m["has_ranker_state"]),
        ingest_seq=None if m["ingest_seq"] is None else int(m["ingest_seq"]),
    )


def to_json(obj: dict[str, Any], what: str) -> str:
    """JSON text of a dict; numpy scalars and arrays become plain numbers and lists."""
    if not isinstance(obj, dict):
        raise TypeError(f"{what} must be a dict, got {type(obj).__name__}")

    def default(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(f"{what}: {type(value).__name__} is not JSON serialisable")

    return json.dumps(obj, sort_keys=True, default=default, allow_nan=True)


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be 'user' or 'item', got {kind!r}")
    return kind


def as_vectors(array: Any, what: str, dim: int | None = None) -> np.ndarray:
    """``array`` as a C-contiguous little-endian float32 matrix ``[n, d]``, checked finite."""
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-d array [n, dim], got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{what} has dim {arr.shape[1]}, the base version has dim {dim}")
    if arr.shape[1] < 1:
        raise ValueError(f"{what} must have dim >= 1, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=VECTOR_DTYPE)
    if not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        raise ValueError(f"{what} holds NaN or inf (first in row {bad}); refusing to store it")
    return out


def decode(blobs: list[bytes], dim: int) -> np.ndarray:
    """Stacked vectors ``[len(blobs), dim]`` float32 from their stored bytes."""
    if not blobs:
        return np.zeros((0, dim), np.float32)
    flat = np.frombuffer(b"".join(blobs), dtype=VECTOR_DTYPE)
    if flat.size != len(blobs) * dim:
        raise VersionStateError(f"stored vectors do not have dim {dim}; the store is corrupt")
    return flat.reshape(len(blobs), dim).astype(np.float32)


class OverlayDelta(NamedTuple):
    """Overlay rows read from the store (see ``EmbeddingStore.overlay_since``).

    ``kind`` ``[n]`` str (``"user"``/``"item"``), ``idx`` ``[n]`` int64, ``vectors``
    ``[n, dim]`` float32, ``updated_at`` ``[n]`` float64 epoch seconds; ``base_version_id``
    the base they belong to (None: unchecked).
    """

    kind: np.ndarray
    idx: np.ndarray
    vectors: np.ndarray
    updated_at: np.ndarray
    base_version_id: int | None = None


@dataclass
class EmbeddingSnapshot:
    """The merged view of one version: base matrices with its overlay rows applied.

    ``users`` ``[U', dim]`` and ``items`` ``[I', dim]`` float32, where ``U' >= num_users``
    when the overlay holds new nodes (rows of unknown nodes in a gap are zero; see
    :meth:`mask`). ``overlay_users``/``overlay_items`` map an overlaid idx to its
    ``updated_at``. :meth:`apply` is not thread-safe; refresh a copy or under a lock.

    >>> v = VersionInfo(id=2, model="mf", cutoff=100.0, dim=2, num_users=1, num_items=1)
    >>> snap = EmbeddingSnapshot(v, np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32))
    >>> _ = snap.apply(OverlayDelta(np.array(["item"]), np.array([2]), np.ones((1, 2)),
    ...                             np.array([150.0])))
    >>> snap.items.shape, snap.source("item", 2), snap.source("item", 0), snap.updated_at("item", 0)
    ((3, 2), 'overlay', 'base', 100.0)
    >>> snap.mask("item").tolist()
    [True, False, True]
    """

    version: VersionInfo
    users: np.ndarray
    items: np.ndarray
    overlay_users: dict[int, float] = field(default_factory=dict)
    overlay_items: dict[int, float] = field(default_factory=dict)
    updater_state: bytes | None = None

    def matrix(self, kind: str) -> np.ndarray:
        """``users`` or ``items``."""
        return self.users if check_kind(kind) == "user" else self.items

    def overlay(self, kind: str) -> dict[int, float]:
        """``overlay_users`` or ``overlay_items``: idx -> updated_at."""
        return self.overlay_users if check_kind(kind) == "user" else self.overlay_items

    def has(self, kind: str, idx: int) -> bool:
        """Whether the node has a vector (in the base or the overlay)."""
        base = self.version.num_users if check_kind(kind) == "user" else self.version.num_items
        return 0 <= idx < base or int(idx) in self.overlay(kind)

    def source(self, kind: str, idx: int) -> str:
        """``"overlay"`` or ``"base"``; KeyError for a node this version does not know."""
        if int(idx) in self.overlay(kind):
            return "overlay"
        if self.has(kind, idx):
            return "base"
        raise KeyError(f"{self.version.name} has no {kind} with idx {idx}")

    def updated_at(self, kind: str, idx: int) -> float:
        """Epoch seconds: the overlay row's ``updated_at``, else the base's ``cutoff``."""
        if self.source(kind, idx) == "overlay":
            return self.overlay(kind)[int(idx)]
        return self.version.cutoff

    def vector(self, kind: str, idx: int) -> np.ndarray:
        """The merged vector ``[dim]`` (a copy); KeyError for an unknown node."""
        self.source(kind, idx)
        return self.matrix(kind)[int(idx)].copy()

    def mask(self, kind: str) -> np.ndarray:
        """``[rows]`` bool: True where the row holds a vector (False in gaps)."""
        base = self.version.num_users if check_kind(kind) == "user" else self.version.num_items
        out = np.zeros(len(self.matrix(kind)), bool)
        out[:base] = True
        out[np.fromiter(self.overlay(kind), np.int64)] = True
        return out

    def copy(self) -> EmbeddingSnapshot:
        """An independent copy (matrices and overlay maps), to :meth:`apply` rows to while
        readers keep using this one."""
        return EmbeddingSnapshot(self.version, self.users.copy(), self.items.copy(),
                                 dict(self.overlay_users), dict(self.overlay_items),
                                 self.updater_state)

    @property
    def watermark(self) -> float | None:
        """The newest overlay ``updated_at`` (for the next ``overlay_since``), or None."""
        times = [*self.overlay_users.values(), *self.overlay_items.values()]
        return max(times) if times else None

    def apply(self, delta: OverlayDelta) -> EmbeddingSnapshot:
        """Merge overlay rows in place (later rows win; new nodes extend); returns self."""
        if delta.base_version_id not in (None, self.version.id):
            raise ValueError(
                f"overlay rows of v{delta.base_version_id} cannot apply to {self.version.name}"
            )
        for kind in KINDS:
            sel = delta.kind == kind
            if not sel.any():
                continue
            idx, vecs = delta.idx[sel], np.asarray(delta.vectors, np.float32)[sel]
            if vecs.shape[1] != self.version.dim:
                raise ValueError(f"overlay dim {vecs.shape[1]} != {self.version.dim}")
            matrix = self.matrix(kind)
            rows = max(len(matrix), int(idx.max()) + 1)
            if rows > len(matrix):
                grown = np.zeros((rows, self.version.dim), np.float32)
                grown[: len(matrix)] = matrix
                matrix = grown
                setattr(self, "users" if kind == "user" else "items", matrix)
            matrix[idx] = vecs
            times = delta.updated_at[sel].tolist()
            self.overlay(kind).update(zip(idx.tolist(), times, strict=True))
        return self
