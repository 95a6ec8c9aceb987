"""Folds the events after a base version into an :class:`~models.IncrementalUpdater` in one
canonical order and chunking, so the node states are a function of (base, the set of
events) alone: however many ingest processes stored them, in whatever order and batches.

The updater's result depends on how events are grouped into update steps (a node updated
once over three events is not the node updated three times), so the grouping cannot be
the consumer's batches, which depend on partition assignment and timing. The canonical
fold sorts the events by ``(ts, user, item, weight)`` (events equal in all four are
interchangeable) and applies them in consecutive steps of ``chunk`` events; the last,
partial step is applied tentatively: the next :meth:`OrderedFold.add` restores the state
before it and folds it again together with the new events. An event that sorts before the
end of a complete step (late by more than the partial step spans, e.g. from a partition
that lags) changes that step and every later one: the fold undoes them, newest first, from
the rows each one changed (:attr:`OrderedFold.rewinds`), or, beyond the ``undo_steps`` it
keeps those rows for, rebuilds from the base (:attr:`OrderedFold.rebuilds`).

That re-work grows with how far arrival strays from time order (a lagging partition), so a
caller can fold a batch *fast* (``settle=False``): applied at once in arrival order on top,
like the plain updater, and undone (from the rows it changed) by the next settling
:meth:`OrderedFold.add`, which folds it in canonically. The state is canonical after every
settling add; between two, it also holds the fast batches, in arrival order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from models.incremental_updater import IncrementalUpdater
from models.neighbour_buffer import edge_arrays

_Edges = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # user, item, ts, weight


class OrderedFold:
    """An incremental updater fed in canonical order; :meth:`add` per batch of new events.

    Args:
        make: builds the updater on the base version's embeddings and history (called once
            now and again on every rebuild).
        chunk: events per update step (default: ``500``, bench/updater_cost.py's
            micro-batch).
        undo_steps: complete steps that can be undone for a late event (default: ``64``,
            about 0.7 MB each at d = 64); a later event rebuilds from the base.

    >>> import torch
    >>> from models.updater import TemporalUpdater
    >>> make = lambda: IncrementalUpdater(torch.zeros(2, 4), torch.ones(3, 4),
    ...                                   TemporalUpdater(4, time_dim=4), device="cpu")
    >>> a, b = OrderedFold(make, chunk=2), OrderedFold(make, chunk=2)
    >>> _ = a.add([0, 1, 0], [1, 2, 0], [10.0, 30.0, 20.0])
    >>> _ = b.add([1], [2], [30.0]); users, items = b.add([0, 0], [0, 1], [20.0, 10.0])
    >>> users.tolist(), items.tolist(), b.rebuilds  # 30.0 was tentative: no rebuild
    ([0, 1], [0, 1, 2], 0)
    >>> bool(torch.equal(a.inc.user_embeddings(), b.inc.user_embeddings()))
    True
    """

    def __init__(self, make: Callable[[], IncrementalUpdater], chunk: int = 500,
                 undo_steps: int = 64) -> None:
        if chunk < 1 or undo_steps < 0:
            raise ValueError(f"chunk must be >= 1 and undo_steps >= 0, got {chunk}, "
                             f"{undo_steps}")
        self.make, self.chunk, self.undo_steps = make, chunk, undo_steps
        self.inc = make()
        self.rebuilds = 0
        self.rewinds = 0
        self._sealed: list[_Edges] = []  # complete steps, in order
        self._undo: list[dict[str, object]] = []  # checkpoints before the newest steps
        self._tail: _Edges = _empty()  # the tentative step, sorted
        self._before_tail: dict[str, object] | None = None  # state without tail and fast
        self._fast: list[_Edges] = []  # batches applied in arrival order, not yet settled

    @property
    def num_events(self) -> int:
        """Events folded in so far."""
        return len(self._sealed) * self.chunk + len(self._tail[0]) + self.unsettled

    @property
    def unsettled(self) -> int:
        """Events folded in fast, in arrival order, since the last settling :meth:`add`."""
        return sum(len(b[0]) for b in self._fast)

    def add(self, user_idx: object, item_idx: object, ts: object,
            weight: object | None = None, *, settle: bool = True
            ) -> tuple[np.ndarray, np.ndarray]:
        """Fold in new events ``[E]`` (dense indices, epoch seconds, positive weights),
        canonically (``settle``, the default, also settles earlier fast batches) or fast;
        returns the sorted user and item indices whose states may have changed."""
        new = edge_arrays(user_idx, item_idx, ts, weight, what="add")
        if not settle:
            return self._add_fast(new)
        new = _concat([*self._fast, new])
        if not len(new[0]):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        first = tuple(a[:1] for a in _sorted(new))
        redo = len(self._sealed)  # the first complete step the new events change
        while (redo and len(self._sealed) - redo <= len(self._undo)
               and _sorts_before(first, self._sealed[redo - 1])[0]):  # type: ignore[arg-type]
            redo -= 1
        if self._before_tail is not None:
            self.inc.rollback(self._before_tail)
            self._before_tail = None
        if len(self._sealed) - redo > len(self._undo):  # older than the undo log reaches
            redo, self.inc, self._undo = 0, self.make(), []
            self.rebuilds += 1
        elif redo < len(self._sealed):
            for saved in reversed(self._undo[redo - len(self._sealed):]):
                self.inc.rollback(saved)
            del self._undo[redo - len(self._sealed):]
            self.rewinds += 1
        todo = _sorted(_concat([*self._sealed[redo:], self._tail, new]))
        del self._sealed[redo:]
        self._fast = []
        changed = np.unique(todo[0]), np.unique(todo[1])  # what is (re)applied below
        while len(todo[0]) >= self.chunk:
            step = tuple(a[: self.chunk] for a in todo)
            if self.undo_steps:
                self._undo.append(self.inc.checkpoint(np.unique(step[0]), np.unique(step[1])))
                del self._undo[: -self.undo_steps]
            self.inc.update(*step)
            self._sealed.append(step)  # type: ignore[arg-type]
            todo = tuple(a[self.chunk :] for a in todo)  # type: ignore[assignment]
        if len(todo[0]):
            self._before_tail = self.inc.checkpoint(np.unique(todo[0]), np.unique(todo[1]))
            self.inc.update(*todo)
        self._tail = todo
        return changed

    def _add_fast(self, new: _Edges) -> tuple[np.ndarray, np.ndarray]:
        users, items = np.unique(new[0]), np.unique(new[1])
        if not len(users):
            return users, items
        if self._before_tail is None:
            self._before_tail = self.inc.checkpoint(users, items)
        else:  # rows first changed now join the rows saved before the tail
            self.inc.extend_checkpoint(self._before_tail, users, items)
        self.inc.update(*new)
        self._fast.append(new)
        return users, items


def _empty() -> _Edges:
    return (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64),
            np.empty(0, np.float32))


def _concat(parts: list[_Edges]) -> _Edges:
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(4))  # type: ignore[return-value]


def _sorted(edges: _Edges) -> _Edges:
    user, item, ts, weight = edges
    order = np.lexsort((weight, item, user, ts))  # primary key last: ts, user, item, weight
    return tuple(a[order] for a in edges)  # type: ignore[return-value]


def _sorts_before(new: _Edges, step: _Edges) -> np.ndarray:
    """[E] bool: whether each new edge sorts strictly before the last edge of ``step``."""
    before = np.zeros(len(new[0]), bool)
    tied = np.ones(len(new[0]), bool)
    for key in (2, 0, 1, 3):  # ts, user, item, weight
        last = step[key][-1]
        before |= tied & (new[key] < last)
        tied &= new[key] == last
    return before
