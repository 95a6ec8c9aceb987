"""The streaming approach "base + incremental updates" for the window-by-window evaluation.

The base model is fitted once (before the first window, like the stale base); before every
later window the incremental updater folds the previous window's events into the node
states, without refitting. Its cost is the updater's time only. It runs the updater as
``ingest --update`` does (:class:`streamrec.live.LiveUpdater`): the weights the retrain
trained and published with the base, ``IncrementalUpdater`` on neighbour buffers of the
base's events, the same defaults. A model with its own per-event state
(``update(users, items, ts)``) is kept fresh by :class:`StatefulApproach` instead.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor

from evaluation.ranking import fallback_
from models.base import InteractionGraph, Recommender
from models.incremental_updater import IncrementalUpdater
from models.neighbour_buffer import NeighbourBuffer
from models.updater import TemporalUpdater


class IncrementalApproach:
    """A base fitted once, then kept fresh by :class:`~models.IncrementalUpdater`.

    Args:
        model: the base recommender, already fitted on ``trained_on``.
        trained_on: the history the base saw (everything before the first window).
        updater: the updater module, or the serialised weights a retrain publishes
            (``FitOutcome.updater_state``, read by :meth:`TemporalUpdater.from_bytes` as
            ingest reads them). (default: the untrained module, which starts as ROLAND's
            degree-weighted moving average, as ingest uses for a version without weights)
        num_neighbours: recent neighbours per node (default 20, ingest's).
        chunk: events per update call (default 2000, ingest's batch size).

    Users never seen in the history at all get ``model.cold_scores(history)``, what
    ``recommend`` serves them.

    >>> g = InteractionGraph.from_arrays([0, 1], [0, 1], [1.0, 2.0], num_users=3, num_items=2)
    >>> class Const(Recommender):
    ...     def fit(self, graph, valid=None): return self
    ...     def user_embeddings(self): return torch.eye(3, 2)
    ...     def item_embeddings(self): return torch.eye(2)
    >>> a = IncrementalApproach(Const(), trained_on=g)
    >>> a.prepare(g, 3.0)
    >>> a.score(torch.tensor([0, 2])).shape
    torch.Size([2, 2])
    """

    def __init__(
        self,
        model: Recommender,
        *,
        trained_on: InteractionGraph,
        updater: TemporalUpdater | bytes | None = None,
        num_neighbours: int = 20,
        chunk: int = 2000,
    ) -> None:
        users, items = model.user_embeddings(), model.item_embeddings()
        if users.shape[1] < 2:
            raise ValueError("IncrementalApproach needs embeddings of dim >= 2")
        if isinstance(updater, bytes):
            updater = TemporalUpdater.from_bytes(updater)
        module = updater or TemporalUpdater(users.shape[1], seed=0)
        self.trained = isinstance(updater, TemporalUpdater)
        self.model = model
        buffer = NeighbourBuffer.from_graph(trained_on, num_neighbours)
        self._inc = IncrementalUpdater(users, items, module, buffer, device="cpu")
        self._fed_until = float(trained_on.ts.max()) if trained_on.num_edges else -np.inf
        self._known = np.bincount(trained_on.user, minlength=trained_on.num_users) > 0
        self._cold = model.cold_scores(trained_on).detach().to("cpu", torch.float32)
        self._num_items = trained_on.num_items
        self.chunk = chunk

    def prepare(self, history: InteractionGraph, window_start: float) -> None:
        new = history.subset(history.ts > self._fed_until)
        for start in range(0, new.num_edges, self.chunk):
            sl = slice(start, start + self.chunk)
            self._inc.update(new.user[sl], new.item[sl], new.ts[sl], new.weight[sl])
        if new.num_edges:
            self._fed_until = float(new.ts.max())
            self._known = _mark_known(self._known, new.user, history.num_users)
        self._cold = self.model.cold_scores(history).detach().to("cpu", torch.float32)
        self._num_items = history.num_items

    def score(self, users: Tensor) -> Tensor:
        user_table, item_table = self._inc.user_embeddings(), self._inc.item_embeddings()
        n_items = self._num_items
        items = torch.zeros(n_items, item_table.shape[1])
        items[: min(n_items, len(item_table))] = item_table[:n_items].float().cpu()
        inside = users < len(user_table)
        rows = torch.zeros(len(users), user_table.shape[1])
        rows[inside] = user_table[users[inside]].float().cpu()
        scores = rows @ items.T
        known = torch.from_numpy(self._known)
        cold = ~inside | (users >= len(known))
        cold[~cold] = ~known[users[~cold]]
        return fallback_(scores, cold, self._cold)


class StatefulApproach:
    """A model with per-event state, fitted once, then fed every later event before each
    window: the "+incremental" of a model that defines ``update(users, items, ts)`` (e.g. a
    trend ranker whose decayed counts ingest updates per event) and its own ``score``.

    Args:
        model: the fitted model; a deep copy is updated, so the stale base stays as it was.
        trained_on: the history it was fitted on.
        chunk: events per ``update`` call, in time order (default 2000, ingest's batch).

    Users without an event so far get ``model.cold_scores(history)``.

    >>> class Counts(Recommender):
    ...     def fit(self, graph, valid=None):
    ...         self.c = np.bincount(graph.item, minlength=graph.num_items).astype(float)
    ...         return self
    ...     def update(self, users, items, ts): np.add.at(self.c, items, 1.0)
    ...     def score(self, users): return torch.tensor(self.c).float().expand(len(users), -1)
    ...     def user_embeddings(self): return torch.ones(1, 1)
    ...     def item_embeddings(self): return torch.ones(len(self.c), 1)
    >>> g = InteractionGraph.from_arrays([0, 0, 0], [0, 1, 1], [1.0, 2.0, 3.0], num_items=3)
    >>> a = StatefulApproach(Counts().fit(g.before(2.0)), trained_on=g.before(2.0))
    >>> a.prepare(g, 4.0)
    >>> a.score(torch.tensor([0])).tolist()
    [[1.0, 2.0, 0.0]]
    """

    def __init__(self, model: Recommender, *, trained_on: InteractionGraph,
                 chunk: int = 2000) -> None:
        if not callable(getattr(model, "update", None)):
            raise TypeError(f"{type(model).__name__} has no update(users, items, ts)")
        self.model = copy.deepcopy(model)
        self.chunk = chunk
        self._fed_until = float(trained_on.ts.max()) if trained_on.num_edges else -np.inf
        self._known = np.bincount(trained_on.user, minlength=trained_on.num_users) > 0
        self._cold = model.cold_scores(trained_on).detach().to("cpu", torch.float32)

    def prepare(self, history: InteractionGraph, window_start: float) -> None:
        new = history.subset(history.ts > self._fed_until)
        order = np.argsort(new.ts, kind="stable")
        for start in range(0, new.num_edges, self.chunk):
            sl = order[start:start + self.chunk]
            self.model.update(new.user[sl], new.item[sl], new.ts[sl])  # type: ignore[attr-defined]
        if new.num_edges:
            self._fed_until = float(new.ts.max())
            self._known = _mark_known(self._known, new.user, history.num_users)
        self._cold = self.model.cold_scores(history).detach().to("cpu", torch.float32)

    def score(self, users: Tensor) -> Tensor:
        u = users.cpu().numpy()
        warm = (u < len(self._known)) & self._known[np.minimum(u, len(self._known) - 1)]
        scores = self._cold.expand(len(u), -1).clone()
        if warm.any():
            rows = torch.from_numpy(np.flatnonzero(warm))
            scores[rows] = self.model.score(users[rows]).detach().to("cpu", torch.float32)
        return scores


def _mark_known(known: np.ndarray, users: np.ndarray, num_users: int) -> np.ndarray:
    """bool ``[max(len(known), num_users)]``: ``known`` with ``users`` marked as seen."""
    out = np.zeros(max(len(known), num_users), bool)
    out[: len(known)] = known
    out[users] = True
    return out
