"""Bounded per-node buffers of the most recent neighbours, kept in memory for the incremental
updater: for every user its ``N`` latest items, for every item its ``N`` latest users.

A buffer row holds the ``N`` most recent edges of a node by timestamp (ties keep arrival
order), oldest first and left-aligned; an older edge is evicted when a newer one arrives,
as in a ring buffer. An edge that arrives late (older than edges already buffered) is
merged in at its place in time, or dropped at once when ``N`` newer edges are already
held; the node's degree counts it either way. :meth:`NeighbourBuffer.extend` is vectorised
(one ``lexsort`` over the affected rows and the new edges), so a rebuild from the store's
snapshot and the same edges streamed in time order give identical buffers.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np

from models.base import InteractionGraph

KINDS = ("user", "item")
_ROW_ARRAYS = ("nbr", "ts", "w", "len", "deg")  # per-node storage, one row per node
BYTES_FORMAT = 1  # the layout :meth:`NeighbourBuffer.to_bytes` writes


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def edge_arrays(
    user_idx: object, item_idx: object, ts: object, weight: object | None, *, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Edges ``[E]`` as (int64 users, int64 items, float64 seconds, float32 weights; default
    1); ``what`` names the caller in the error raised for arrays of different lengths."""
    u = np.asarray(user_idx, dtype=np.int64).ravel()
    i = np.asarray(item_idx, dtype=np.int64).ravel()
    t = np.asarray(ts, dtype=np.float64).ravel()
    w = (np.ones(len(u), np.float32) if weight is None
         else np.asarray(weight, dtype=np.float32).ravel())
    if not (len(i) == len(t) == len(w) == len(u)):
        raise ValueError(f"{what} needs arrays of one length, got user={len(u)}, "
                         f"item={len(i)}, ts={len(t)}, weight={len(w)}")
    return u, i, t, w


class NeighbourBuffer:
    """The ``num_neighbours`` most recent neighbours of every user and item.

    Args:
        num_neighbours: ``N``, edges kept per node (default: ``20``).
        num_users: initial size of the user index space (default: ``0``); grows on demand.
        num_items: initial size of the item index space (default: ``0``); grows on demand.

    Storage per kind: neighbour ids int64 ``[n, N]``, times float64 ``[n, N]`` (epoch
    seconds), weights float32 ``[n, N]``, the filled length ``[n]`` and the total degree
    ``[n]`` (every edge ever added, evicted or not): about ``20 * N`` bytes a node.

    >>> buf = NeighbourBuffer(num_neighbours=2)
    >>> _ = buf.extend([0, 0, 0], [5, 6, 7], [1.0, 2.0, 3.0])
    >>> nbr, ts, w, mask = buf.recent("user", np.array([0]))
    >>> nbr.tolist(), ts.tolist(), mask.tolist(), buf.degree("user", np.array([0])).tolist()
    ([[6, 7]], [[2.0, 3.0]], [[True, True]], [3])
    >>> buf.recent("item", np.array([5, 9]))[3].tolist()  # item 9 was never seen
    [[True, False], [False, False]]
    """

    def __init__(self, num_neighbours: int = 20, num_users: int = 0, num_items: int = 0) -> None:
        if num_neighbours < 1:
            raise ValueError(f"num_neighbours must be >= 1, got {num_neighbours}")
        if num_users < 0 or num_items < 0:
            raise ValueError(f"sizes must be >= 0, got {num_users}, {num_items}")
        self.num_neighbours = num_neighbours
        self._size = {"user": 0, "item": 0}
        self._nbr: dict[str, np.ndarray] = {}
        self._ts: dict[str, np.ndarray] = {}
        self._w: dict[str, np.ndarray] = {}
        self._len: dict[str, np.ndarray] = {}
        self._deg: dict[str, np.ndarray] = {}
        for kind, n in (("user", num_users), ("item", num_items)):
            self._allocate(kind, n)
            self._size[kind] = n

    @classmethod
    def from_graph(cls, graph: InteractionGraph, num_neighbours: int = 20) -> NeighbourBuffer:
        """The buffer of a graph snapshot (e.g. the store's at start-up), sized to its index
        spaces; equal to streaming the same edges in time order through :meth:`extend`."""
        buf = cls(num_neighbours, graph.num_users, graph.num_items)
        return buf.extend(graph.user, graph.item, graph.ts, graph.weight)

    @property
    def num_users(self) -> int:
        return self._size["user"]

    @property
    def num_items(self) -> int:
        return self._size["item"]

    def size(self, kind: str) -> int:
        """Size of the ``kind`` index space (``"user"`` or ``"item"``)."""
        return self._size[_check_kind(kind)]

    def _allocate(self, kind: str, capacity: int) -> None:
        n, old = self.num_neighbours, self._size[kind]
        capacity = max(capacity, 1)  # row 0 always exists, so padded lookups stay in range
        fresh = {
            "_nbr": np.zeros((capacity, n), np.int64), "_ts": np.zeros((capacity, n)),
            "_w": np.zeros((capacity, n), np.float32), "_len": np.zeros(capacity, np.int64),
            "_deg": np.zeros(capacity, np.int64),
        }
        for name, array in fresh.items():
            table = getattr(self, name)
            if kind in table:
                array[:old] = table[kind][:old]
            table[kind] = array

    def grow(self, kind: str, size: int) -> None:
        """Make room for indices ``< size`` (capacity doubles, so growth is amortised)."""
        if size > len(self._len[_check_kind(kind)]):
            self._allocate(kind, max(size, 2 * len(self._len[kind])))
        self._size[kind] = max(self._size[kind], size)

    def extend(
        self, user_idx: object, item_idx: object, ts: object, weight: object | None = None
    ) -> NeighbourBuffer:
        """Add edges ``[E]`` (dense indices, epoch seconds, positive weights, default 1) to
        both sides; returns ``self``. Edges need not be sorted; late ones are merged in
        time order (see the module docstring)."""
        user, item, t, w = edge_arrays(user_idx, item_idx, ts, weight, what="extend")
        if not len(user):
            return self
        if user.min() < 0 or item.min() < 0:
            raise ValueError("user and item indices must be >= 0")
        if not np.isfinite(t).all():
            raise ValueError("edge timestamps must be finite epoch seconds")
        if not (w > 0).all():
            raise ValueError("edge weights must be > 0")
        self.grow("user", int(user.max()) + 1)
        self.grow("item", int(item.max()) + 1)
        self._insert("user", user, item, t, w)
        self._insert("item", item, user, t, w)
        return self

    def _insert(
        self, kind: str, node: np.ndarray, nbr: np.ndarray, ts: np.ndarray, w: np.ndarray
    ) -> None:
        cap = self.num_neighbours
        rows, local = np.unique(node, return_inverse=True)
        held = self._len[kind][rows]
        # Existing entries of the affected rows, flattened, followed by the new edges;
        # existing entries come first so that equal timestamps keep arrival order.
        old_local = np.repeat(np.arange(len(rows)), held)
        old_col = np.arange(int(held.sum())) - np.repeat(np.cumsum(held) - held, held)
        old_row = rows[old_local]
        all_local = np.concatenate([old_local, local])
        all_ts = np.concatenate([self._ts[kind][old_row, old_col], ts])
        all_nbr = np.concatenate([self._nbr[kind][old_row, old_col], nbr])
        all_w = np.concatenate([self._w[kind][old_row, old_col], w])
        order = np.lexsort((np.arange(len(all_ts)), all_ts, all_local))
        added = np.bincount(local, minlength=len(rows))
        total = held + added
        start = np.cumsum(total) - total
        kept = np.minimum(total, cap)
        sorted_local = all_local[order]
        rank = np.arange(len(order)) - start[sorted_local]
        col = rank - (total - kept)[sorted_local]
        keep = col >= 0
        dest_row, dest_col, src = rows[sorted_local[keep]], col[keep], order[keep]
        self._nbr[kind][dest_row, dest_col] = all_nbr[src]
        self._ts[kind][dest_row, dest_col] = all_ts[src]
        self._w[kind][dest_row, dest_col] = all_w[src]
        self._len[kind][rows] = kept
        self._deg[kind][rows] += added

    def _rows(self, kind: str, idx: object) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(idx, dtype=np.int64).ravel()
        if len(idx) and idx.min() < 0:
            raise ValueError("node indices must be >= 0")
        inside = idx < self._size[_check_kind(kind)]
        return idx, inside

    def recent(
        self, kind: str, idx: object
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The buffered neighbours of nodes ``idx`` ``[B]`` of ``kind``:
        ``(neighbour ids int64 [B, N], times float64 [B, N], weights float32 [B, N],
        mask bool [B, N])``, oldest first; padded slots have id 0, time 0, weight 0 and
        ``mask`` False. Indices beyond the buffer's size have no neighbours."""
        idx, inside = self._rows(kind, idx)
        safe = np.where(inside, idx, 0)
        length = np.where(inside, self._len[kind][safe], 0)
        mask = np.arange(self.num_neighbours)[None, :] < length[:, None]
        nbr = np.where(mask, self._nbr[kind][safe], 0)
        ts = np.where(mask, self._ts[kind][safe], 0.0)
        w = np.where(mask, self._w[kind][safe], np.float32(0.0))
        return nbr, ts, w.astype(np.float32), mask

    def degree(self, kind: str, idx: object) -> np.ndarray:
        """int64 ``[B]``: every edge ever added to each node (0 beyond the buffer's size)."""
        idx, inside = self._rows(kind, idx)
        safe = np.where(inside, idx, 0)
        return np.where(inside, self._deg[kind][safe], 0).astype(np.int64)

    def save_rows(self, user_idx: np.ndarray, item_idx: np.ndarray) -> dict[str, object]:
        """A copy of the rows of these nodes and of the sizes: all that :meth:`extend` with
        edges among these nodes changes, for :meth:`restore_rows` (cheap: rows, not tables)."""
        saved: dict[str, object] = {"size": dict(self._size)}
        for kind in KINDS:
            saved[kind] = {"flag": np.zeros(self._size[kind], bool), "parts": []}
        return self.extend_saved_rows(saved, user_idx, item_idx)

    def extend_saved_rows(self, saved: dict[str, object], user_idx: np.ndarray,
                          item_idx: np.ndarray) -> dict[str, object]:
        """Add to :meth:`save_rows`' copy the rows of further nodes, unchanged since."""
        for kind, idx in (("user", user_idx), ("item", item_idx)):
            part = saved[kind]  # type: ignore[index]
            more = np.unique(np.asarray(idx, dtype=np.int64))
            more = more[more < saved["size"][kind]]  # type: ignore[index]
            more = more[~part["flag"][more]]
            if len(more):
                part["flag"][more] = True
                part["parts"].append((more, *(getattr(self, f"_{name}")[kind][more].copy()
                                              for name in _ROW_ARRAYS)))
        return saved

    def restore_rows(self, saved: dict[str, object]) -> NeighbourBuffer:
        """Undo every :meth:`extend` since :meth:`save_rows` (of edges among its nodes);
        returns ``self``."""
        for kind in KINDS:
            size, now = saved["size"][kind], self._size[kind]  # type: ignore[index]
            for name in _ROW_ARRAYS:
                getattr(self, f"_{name}")[kind][size:now] = 0  # rows grown since: empty again
            for idx, *rows in saved[kind]["parts"]:  # type: ignore[index]
                for name, values in zip(_ROW_ARRAYS, rows, strict=True):
                    getattr(self, f"_{name}")[kind][idx] = values
            self._size[kind] = size
        return self

    def state_dict(self) -> dict[str, object]:
        """Plain numpy arrays (trimmed to the sizes) and ints; see :meth:`load_state_dict`."""
        state: dict[str, object] = {"num_neighbours": self.num_neighbours}
        for kind in KINDS:
            n = self._size[kind]
            for name in ("nbr", "ts", "w", "len", "deg"):
                state[f"{kind}_{name}"] = getattr(self, f"_{name}")[kind][:n].copy()
        return state

    def load_state_dict(self, state: dict[str, object]) -> NeighbourBuffer:
        """Restore a :meth:`state_dict`; the neighbour count must match. Returns ``self``."""
        if int(state["num_neighbours"]) != self.num_neighbours:  # type: ignore[call-overload]
            raise ValueError(f"state has num_neighbours={state['num_neighbours']}, this buffer "
                             f"{self.num_neighbours}; build NeighbourBuffer with the same N")
        for kind in KINDS:
            n = len(state[f"{kind}_len"])  # type: ignore[arg-type]
            self._size[kind] = 0
            self._allocate(kind, n)
            self._size[kind] = n
            for name in ("nbr", "ts", "w", "len", "deg"):
                getattr(self, f"_{name}")[kind][:n] = np.asarray(state[f"{kind}_{name}"])
        return self

    def to_bytes(self) -> bytes:
        """The buffer as ``.npz`` bytes (no pickles), only the filled slots: per kind the
        lengths ``[n]`` int32, degrees ``[n]`` int64 and, row after row, the held edges'
        neighbours int32, times float64 and weights float32 (16 bytes an edge, against the
        20 * N a node of the in-memory tables); :meth:`from_bytes` reverses it exactly."""
        arrays: dict[str, np.ndarray] = {
            "format": np.array(BYTES_FORMAT), "num_neighbours": np.array(self.num_neighbours)}
        for kind in KINDS:
            n = self._size[kind]
            length = self._len[kind][:n]
            held = np.arange(self.num_neighbours)[None, :] < length[:, None]
            nbr = self._nbr[kind][:n][held]
            if len(nbr) and nbr.max() > np.iinfo(np.int32).max:
                raise ValueError(f"{kind} neighbour ids beyond int32 cannot be serialised")
            arrays.update({f"{kind}_len": length.astype(np.int32),
                           f"{kind}_deg": self._deg[kind][:n],
                           f"{kind}_nbr": nbr.astype(np.int32),
                           f"{kind}_ts": self._ts[kind][:n][held],
                           f"{kind}_w": self._w[kind][:n][held]})
        out = io.BytesIO()
        np.savez(out, **arrays)  # uncompressed: times and ids barely compress, and a
        return out.getvalue()    # start-up reads it at memory speed

    @classmethod
    def from_bytes(cls, data: bytes) -> NeighbourBuffer:
        """The buffer :meth:`to_bytes` wrote (sized as it was).

        Raises:
            ValueError: the bytes are not such a buffer (or of another format version).
        """
        try:
            if not bytes(data[:2]) == b"PK":
                raise ValueError("not .npz bytes")
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                if int(z["format"]) != BYTES_FORMAT:
                    raise ValueError(f"format {int(z['format'])}, this code reads "
                                     f"{BYTES_FORMAT}")
                buf = cls(int(z["num_neighbours"]))
                for kind in KINDS:
                    buf._load_filled(kind, {name: z[f"{kind}_{name}"] for name in _ROW_ARRAYS})
        except (OSError, KeyError, IndexError, TypeError, ValueError, zipfile.BadZipFile
                ) as exc:
            raise ValueError("these bytes are not a NeighbourBuffer written by to_bytes(): "
                             f"{exc}") from None
        return buf

    def _load_filled(self, kind: str, part: dict[str, np.ndarray]) -> None:
        """Fill the empty ``kind`` tables from :meth:`to_bytes`' arrays of one kind."""
        length = part["len"].astype(np.int64)
        n, total = len(length), int(length.sum())
        if (len(part["deg"]) != n or (length < 0).any() or (length > self.num_neighbours).any()
                or any(len(part[name]) != total for name in ("nbr", "ts", "w"))):
            raise ValueError(f"its {kind} arrays disagree in length")
        self._allocate(kind, n)
        self._size[kind] = n
        row = np.repeat(np.arange(n), length)
        col = np.arange(total) - np.repeat(np.cumsum(length) - length, length)
        for name in ("nbr", "ts", "w"):
            getattr(self, f"_{name}")[kind][row, col] = part[name]
        self._len[kind][:n] = length
        self._deg[kind][:n] = part["deg"]

    @staticmethod
    def stored_num_neighbours(data: bytes) -> int:
        """``N`` of the buffer in :meth:`to_bytes` bytes, without decoding the rest."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return int(z["num_neighbours"])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_neighbours={self.num_neighbours}, "
                f"num_users={self.num_users}, num_items={self.num_items})")
