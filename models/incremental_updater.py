"""The stateful incremental updater the consumer calls once per ingested batch (river style:
state on the object, the caller owns the loop). It keeps every node's state, starting from
the active base version's embeddings, and refreshes only the users and items a batch
touches, with a trained :class:`~models.updater.TemporalUpdater` over their most recent
neighbours (:class:`~models.neighbour_buffer.NeighbourBuffer`); users by LightGCN's
propagation rule by default, scaled by the ``c`` it fits on the base
(:meth:`IncrementalUpdater.fit_lightgcn_scale`), and so are items the base does not know.

Time never runs backwards. A node updated in a batch is updated *as of*
``max(its last update, its latest event in the batch)``: an event older than the node's
last update is still merged into the neighbour buffer at its place in time, and the node's
state is recomputed at its last update time, never at the older event's time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.base import resolve_device
from models.neighbour_buffer import NeighbourBuffer, edge_arrays
from models.updater import SIDES, TemporalUpdater

OTHER_SIDE = {"user": "item", "item": "user"}


@dataclass(frozen=True)
class UpdateResult:
    """The refreshed rows of one batch, on CPU, ready for the embedding store's overlay.

    ``user_idx`` int64 ``[a]``, ``user_vectors`` float32 ``[a, d]``, ``user_updated_at``
    float64 ``[a]`` (epoch seconds, per node), the same for items ``[b]``, and
    ``updated_at``: the latest of those times (``-inf`` for an empty batch).
    """

    user_idx: np.ndarray
    user_vectors: np.ndarray
    user_updated_at: np.ndarray
    item_idx: np.ndarray
    item_vectors: np.ndarray
    item_updated_at: np.ndarray
    updated_at: float


@dataclass(frozen=True)
class UpdateStep:
    """One batch's affected nodes and their new output states (still attached to the
    autograd graph when computed under grad; see :meth:`IncrementalUpdater.step`)."""

    user_idx: np.ndarray
    user_state: torch.Tensor
    user_time: np.ndarray
    item_idx: np.ndarray
    item_state: torch.Tensor
    item_time: np.ndarray


def _as_table(x: object, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to(torch.float32)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [n, d] matrix, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} holds NaN or inf values")
    return t


class IncrementalUpdater:
    """Node states that follow the stream, one :meth:`update` per batch.

    Args:
        base_user: float32 ``[U, d]`` user embeddings of the active base version.
        base_item: float32 ``[I, d]`` item embeddings of the same version.
        updater: the trained :class:`~models.updater.TemporalUpdater` (its
            ``embedding_dim`` must be ``d``); it is moved to ``device`` and set to eval mode.
        buffer: neighbour buffer holding the history up to now, usually
            ``NeighbourBuffer.from_graph(snapshot)``; kept and extended in place
            (default: an empty buffer of ``num_neighbours``).
        num_neighbours: ``N`` of the default buffer (default: ``20``).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:n]"``
            (default: ``"auto"``).

    Indices beyond ``U``/``I`` are new nodes: they start from the updater's new-node
    vector (plus projected content features, see :meth:`add_item_features`).

    States enter the module divided by ``scale``, the base's mean row norm, and leave it
    multiplied back, so one trained module fits base versions of different norms (the
    live-update training sees a base fitted on less data than the one it serves with).

    >>> m = TemporalUpdater(4, time_dim=4)
    >>> inc = IncrementalUpdater(torch.zeros(2, 4), torch.ones(3, 4), m, device="cpu")
    >>> r = inc.update([0, 2], [1, 3], [100.0, 120.0])  # user 2 and item 3 are new
    >>> r.user_idx.tolist(), r.item_idx.tolist(), r.user_vectors.shape, r.updated_at
    ([0, 2], [1, 3], (2, 4), 120.0)
    >>> inc.num_users, inc.num_items
    (3, 4)
    """

    def __init__(
        self,
        base_user: object,
        base_item: object,
        updater: TemporalUpdater,
        buffer: NeighbourBuffer | None = None,
        *,
        num_neighbours: int = 20,
        device: str | torch.device = "auto",
    ) -> None:
        user, item = _as_table(base_user, "base_user"), _as_table(base_item, "base_item")
        if user.shape[1] != item.shape[1]:
            raise ValueError(f"base_user is [*, {user.shape[1]}] but base_item is "
                             f"[*, {item.shape[1]}]; both must come from one base version")
        if user.shape[1] != updater.embedding_dim:
            raise ValueError(f"the base embeddings have d={user.shape[1]} but the updater was "
                             f"trained for d={updater.embedding_dim}; use the updater published "
                             "with this base version")
        self.device = resolve_device(device)
        self.updater = updater.to(self.device).eval()
        self.buffer = buffer if buffer is not None else NeighbourBuffer(num_neighbours)
        self.num_layers, self.embedding_dim = updater.num_layers, updater.embedding_dim
        norm = float(torch.cat([user, item]).norm(dim=1).mean()) if len(user) + len(item) else 0
        self.scale = norm if norm > 0 else 1.0
        self._states: dict[str, list[torch.Tensor]] = {
            "user": [user.to(self.device).clone() for _ in range(self.num_layers)],
            "item": [item.to(self.device).clone() for _ in range(self.num_layers)],
        }
        self._last = {s: np.full(len(self._states[s][0]), -np.inf) for s in SIDES}
        self._known = {s: np.ones(len(self._states[s][0]), bool) for s in SIDES}
        self._features: torch.Tensor | None = None  # [I, item_feature_dim] on device
        self._has_features = np.zeros(len(item), bool)
        self.base_items = len(item)  # item rows at or past this are unknown to the base
        self.user_scale = self.fit_lightgcn_scale("user", user, item)
        self.item_scale = self.fit_lightgcn_scale("item", item, user)

    def fit_lightgcn_scale(self, side: str, own: torch.Tensor, other: torch.Tensor,
                           max_nodes: int = 20_000, seed: int = 0) -> float:
        """``c`` of LightGCN's rule for ``side``: the least-squares ratio of the base's
        vectors ``own`` to their degree-normalised neighbour sums
        ``sum_j x_j / sqrt(d_v d_j)`` over the ``other`` side (the rule's own sum, with no
        history and ``c = 1``), over (up to ``max_nodes``, sampled with ``seed``) nodes
        whose whole history is in the buffer (``0 < d_v <= N``); 1.0 without any. A
        LightGCN base on the synthetic stream: about 1.5 for users."""
        deg = self.buffer.degree(side, np.arange(len(own)))
        idx = np.flatnonzero((deg > 0) & (deg <= self.buffer.num_neighbours))
        if not len(idx):
            return 1.0
        if len(idx) > max_nodes:
            idx = np.sort(np.random.default_rng(seed).choice(idx, max_nodes, replace=False))
        nbr, _, weight, mask = self.buffer.recent(side, idx)
        inside = mask & (nbr < len(other))
        nbr_deg = self.buffer.degree(OTHER_SIDE[side], nbr.ravel()).reshape(nbr.shape)
        with torch.no_grad():
            agg = self.updater.lightgcn_step(
                torch.zeros(len(idx), own.shape[1]),
                other[torch.from_numpy(np.where(inside, nbr, 0))], torch.from_numpy(weight),
                torch.from_numpy(inside), torch.from_numpy(nbr_deg),
                torch.zeros(len(idx)), torch.from_numpy(deg[idx]), 1.0)
        denominator = float((agg * agg).sum())
        if denominator <= 0:
            return 1.0
        return float((agg * own[torch.from_numpy(idx)]).sum()) / denominator

    # ----------------------------------------------------------------- sizes and views
    @property
    def num_users(self) -> int:
        return len(self._states["user"][0])

    @property
    def num_items(self) -> int:
        return len(self._states["item"][0])

    def user_embeddings(self) -> torch.Tensor:
        """float32 CPU ``[num_users, d]``: the current output state of every user."""
        return self._states["user"][-1].detach().float().cpu().clone()

    def item_embeddings(self) -> torch.Tensor:
        """float32 CPU ``[num_items, d]``: the current output state of every item."""
        return self._states["item"][-1].detach().float().cpu().clone()

    def rows(self, side: str, idx: object) -> tuple[np.ndarray, np.ndarray]:
        """The current output states float32 CPU ``[B, d]`` of nodes ``idx`` ``[B]`` of
        ``side`` and their last update times float64 ``[B]`` (epoch seconds)."""
        index = np.asarray(idx, dtype=np.int64)
        rows = torch.from_numpy(index).to(self.device)
        states = self._states[side][-1][rows].detach().float().cpu().numpy()
        return states, self._last[side][index].copy()

    def last_update(self, side: str, idx: object) -> np.ndarray:
        """float64 ``[B]`` time of each node's last update (``-inf``: never updated)."""
        return self._last[side][np.asarray(idx, dtype=np.int64)]

    def state_tables(self, side: str) -> list[torch.Tensor]:
        """The live per-layer state tables ``[n, d]`` of ``side`` (for training code)."""
        return self._states[side]

    def _grow(self, side: str, size: int) -> None:
        n = len(self._states[side][0])
        if size <= n:
            return
        extra = size - n
        with torch.no_grad():
            init = self.updater.initial_state(side, extra).detach().to(self.device) * self.scale
        self._states[side] = [torch.cat([t, init]) for t in self._states[side]]
        self._last[side] = np.concatenate([self._last[side], np.full(extra, -np.inf)])
        self._known[side] = np.concatenate([self._known[side], np.zeros(extra, bool)])
        if side == "item":
            self._has_features = np.concatenate([self._has_features, np.zeros(extra, bool)])
            if self._features is not None:
                pad = self._features.new_zeros(extra, self._features.shape[1])
                self._features = torch.cat([self._features, pad])

    def grow(self, num_users: int, num_items: int) -> IncrementalUpdater:
        """Make room for indices ``< num_users`` and ``< num_items`` (new nodes)."""
        self._grow("user", num_users)
        self._grow("item", num_items)
        return self

    def add_item_features(self, item_idx: object, features: object) -> IncrementalUpdater:
        """Content features ``[k, item_feature_dim]`` of items ``[k]``, used when such an item
        first gets a state (items the base already knows keep their base state)."""
        idx = np.asarray(item_idx, dtype=np.int64).ravel()
        feats = torch.as_tensor(features, dtype=torch.float32)
        width = self.updater.item_feature_dim
        if not width:
            raise ValueError("this updater was built with item_feature_dim=0")
        if feats.shape != (len(idx), width):
            raise ValueError(f"features must be [{len(idx)}, {width}], got {tuple(feats.shape)}")
        if len(idx):
            self._grow("item", int(idx.max()) + 1)
            if self._features is None:
                self._features = torch.zeros(self.num_items, width, device=self.device)
            self._features[torch.from_numpy(idx).to(self.device)] = feats.to(self.device)
            self._has_features[idx] = True
        return self

    # ------------------------------------------------------------------------ updating
    def _initial(self, side: str, idx: np.ndarray) -> torch.Tensor:
        if side == "item" and self._features is not None:
            rows = torch.from_numpy(idx).to(self.device)
            has = torch.from_numpy(self._has_features[idx]).to(self.device)
            return self.updater.initial_state(side, len(idx), self._features[rows], has)
        return self.updater.initial_state(side, len(idx))

    def _batch_arrays(
        self, user_idx: object, item_idx: object, ts: object, weight: object | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return edge_arrays(user_idx, item_idx, ts, weight, what="update")

    def _side_inputs(
        self, side: str, idx: np.ndarray, local: np.ndarray, t: np.ndarray, deg_old: np.ndarray
    ) -> dict[str, object]:
        """Tensors for the nodes ``idx`` of ``side`` after the buffer took the batch; starts
        nodes without a state from the module's initial state."""
        latest = np.full(len(idx), -np.inf)
        np.maximum.at(latest, local, t)
        at = np.maximum(latest, self._last[side][idx])  # never backwards
        nbr, nbr_ts, nbr_w, mask = self.buffer.recent(side, idx)
        if self.updater.attend == "batch":
            # read the batch's own neighbours (they are all buffered: the N most recent from
            # the node's earliest event in the batch on); a node without a state reads all
            earliest = np.full(len(idx), np.inf)
            np.minimum.at(earliest, local, t)
            known = self._known[side][idx]
            mask = mask & (~known[:, None] | (nbr_ts >= earliest[:, None]))
        dev = self.device
        x: dict[str, object] = dict(
            idx=idx, at=at, rows=torch.from_numpy(idx).to(dev),
            nbr=torch.from_numpy(nbr).to(dev),
            dt=torch.from_numpy(at[:, None] - nbr_ts).to(dev),
            weight=torch.from_numpy(nbr_w).to(dev), mask=torch.from_numpy(mask).to(dev),
            deg_old=torch.from_numpy(deg_old).to(dev),
            deg_new=torch.from_numpy(np.bincount(local)).to(dev), init=None,
        )
        # items outside the base and without content features (those start from their
        # projected features, which LightGCN's rule would drop) follow LightGCN's rule too
        new_items = (np.flatnonzero((idx >= self.base_items) & ~self._has_features[idx])
                     if side == "item" and self.updater.new_item_aggregation == "lightgcn"
                     else np.zeros(0, np.int64))
        if (side == "user" and self.updater.user_aggregation == "lightgcn") or len(new_items):
            degree = self.buffer.degree(OTHER_SIDE[side], nbr.ravel()).reshape(nbr.shape)
            x["nbr_degree"] = torch.from_numpy(degree).to(dev)
        if len(new_items):
            x["lightgcn_rows"] = torch.from_numpy(new_items).to(dev)
        unknown = np.flatnonzero(~self._known[side][idx])
        if len(unknown):
            init = self._initial(side, idx[unknown])  # attached to the graph when training
            for table in self._states[side]:
                table[torch.from_numpy(idx[unknown]).to(dev)] = init.detach() * self.scale
            x["init"] = (torch.from_numpy(unknown).to(dev), init)
        return x

    def step(
        self, user_idx: object, item_idx: object, ts: object, weight: object | None = None
    ) -> UpdateStep:
        """Ingest one batch and update its nodes; the new output states come back attached
        to the autograd graph when grad is enabled (training), and are written, detached,
        into the state tables either way. :meth:`update` is this under ``no_grad``."""
        u, i, t, w = self._batch_arrays(user_idx, item_idx, ts, weight)
        if not len(u):
            empty, none = torch.zeros(0, self.embedding_dim, device=self.device), np.zeros(0, int)
            return UpdateStep(none, empty, np.zeros(0), none, empty, np.zeros(0))
        unique = {side: np.unique(own, return_inverse=True) for side, own in (("user", u),
                                                                               ("item", i))}
        deg_old = {side: self.buffer.degree(side, unique[side][0]) for side in SIDES}
        self.buffer.extend(u, i, t, w)  # validates indices, times and weights
        self.grow(int(u.max()) + 1, int(i.max()) + 1)
        inputs = {side: self._side_inputs(side, *unique[side], t, deg_old[side])
                  for side in SIDES}
        new = self._propagate(inputs)
        for side, x in inputs.items():
            self._last[side][x["idx"]] = x["at"]
            self._known[side][x["idx"]] = True
        user, item = inputs["user"], inputs["item"]
        return UpdateStep(user["idx"], new["user"], user["at"],  # type: ignore[arg-type]
                          item["idx"], new["item"], item["at"])  # type: ignore[arg-type]

    def _propagate(self, inputs: dict[str, dict]) -> dict[str, torch.Tensor]:
        """Run the layers over the affected nodes; write each layer's states; return the
        output layer's (see :class:`~models.updater.TemporalUpdater` for the recursion)."""
        scale = self.scale
        source = {s: self._states[s][-1] for s in SIDES}  # H^0: output states before the batch
        new: dict[str, torch.Tensor] = {}
        for layer in range(self.num_layers):
            for side, x in inputs.items():
                prev = self._states[side][layer][x["rows"]] / scale
                if x["init"] is not None:
                    unknown, init = x["init"]
                    prev = prev.index_put((unknown,), init)
                nbr_state = source[OTHER_SIDE[side]][x["nbr"]] / scale
                if side == "user" and self.updater.user_aggregation == "lightgcn":
                    # LightGCN's rule, no learned weights
                    new[side] = scale * self.updater.lightgcn_step(
                        prev, nbr_state, x["weight"], x["mask"], x["nbr_degree"],
                        x["deg_old"], x["deg_new"], self.user_scale)
                    continue
                new[side] = scale * self.updater.step(
                    layer, side, prev, nbr_state, x["dt"], x["weight"], x["mask"],
                    x["deg_old"], x["deg_new"])
                if "lightgcn_rows" in x:  # items outside the base: LightGCN's rule, w = 1
                    r = x["lightgcn_rows"]
                    new[side] = new[side].index_put((r,), scale * self.updater.lightgcn_step(
                        prev[r], nbr_state[r], x["weight"][r], x["mask"][r],
                        x["nbr_degree"][r], x["deg_old"][r], x["deg_new"][r],
                        self.item_scale, history_weight=1.0))
            if layer + 1 < self.num_layers:  # the next layer reads this one, batch included
                source = {s: self._states[s][layer].index_put((inputs[s]["rows"],), new[s])
                          for s in SIDES}
            for side, x in inputs.items():
                self._states[side][layer][x["rows"]] = new[side].detach()
        return new

    def update(
        self, user_idx: object, item_idx: object, ts: object, weight: object | None = None
    ) -> UpdateResult:
        """Ingest a batch of interactions ``[E]`` (dense indices, epoch seconds, positive
        weights, default 1) and return the refreshed rows of the nodes it touched."""
        with torch.no_grad():
            s = self.step(user_idx, item_idx, ts, weight)
        times = np.concatenate([s.user_time, s.item_time])
        return UpdateResult(
            s.user_idx, s.user_state.float().cpu().numpy(), s.user_time,
            s.item_idx, s.item_state.float().cpu().numpy(), s.item_time,
            float(times.max()) if len(times) else -np.inf,
        )

    # ------------------------------------------------------------- state and devices
    def to(self, device: str | torch.device) -> IncrementalUpdater:
        """Move the module and every state table to ``device``; returns ``self``."""
        self.device = resolve_device(device)
        self.updater.to(self.device)
        self._states = {s: [t.to(self.device) for t in self._states[s]] for s in SIDES}
        if self._features is not None:
            self._features = self._features.to(self.device)
        return self

    def state_dict(self) -> dict[str, object]:
        """Everything needed to resume: states (CPU tensors), update times, which nodes have
        a state, item features, the neighbour buffer and the module's weights."""
        return {
            "embedding_dim": self.embedding_dim, "num_layers": self.num_layers,
            "scale": self.scale, "base_items": self.base_items,
            **{f"{s}_states": [t.detach().cpu().clone() for t in self._states[s]] for s in SIDES},
            **{f"{s}_last_update": self._last[s].copy() for s in SIDES},
            **{f"{s}_known": self._known[s].copy() for s in SIDES},
            "item_features": None if self._features is None else self._features.cpu().clone(),
            "item_has_features": self._has_features.copy(),
            "buffer": self.buffer.state_dict(),
            "updater": {k: v.detach().cpu() for k, v in self.updater.state_dict().items()},
        }

    def checkpoint(self, user_idx: object, item_idx: object) -> dict[str, object]:
        """What an :meth:`update` with edges among users ``user_idx`` and items ``item_idx``
        changes (their rows, the sizes, their buffer rows), for :meth:`rollback`; costs
        rows, not a copy of the tables as :meth:`state_dict` does."""
        saved: dict[str, object] = {
            side: {"size": len(self._last[side]), "flag": np.zeros(len(self._last[side]), bool),
                   "parts": []}
            for side in SIDES
        }
        saved["buffer"] = self.buffer.save_rows(np.empty(0, np.int64), np.empty(0, np.int64))
        return self.extend_checkpoint(saved, user_idx, item_idx)

    def extend_checkpoint(self, saved: dict[str, object], user_idx: object,
                          item_idx: object) -> dict[str, object]:
        """Add to a :meth:`checkpoint` the rows of further nodes, unchanged since it was
        taken, so that one :meth:`rollback` undoes updates among all of them."""
        for side, idx in (("user", user_idx), ("item", item_idx)):
            part = saved[side]  # type: ignore[index]
            more = np.unique(np.asarray(idx, dtype=np.int64))
            more = more[more < part["size"]]
            more = more[~part["flag"][more]]
            if len(more):
                part["flag"][more] = True
                rows = torch.from_numpy(more).to(self.device)
                part["parts"].append((more, [t[rows].clone() for t in self._states[side]],
                                      self._last[side][more].copy(),
                                      self._known[side][more].copy()))
        self.buffer.extend_saved_rows(saved["buffer"], np.asarray(user_idx),  # type: ignore[arg-type]
                                      np.asarray(item_idx))
        return saved

    def rollback(self, saved: dict[str, object]) -> IncrementalUpdater:
        """Undo the updates since :meth:`checkpoint` (of edges among its nodes); returns
        ``self``."""
        for side in SIDES:
            part = saved[side]  # type: ignore[index]
            size = part["size"]
            self._states[side] = [t[:size] for t in self._states[side]]
            self._last[side] = self._last[side][:size]
            self._known[side] = self._known[side][:size]
            for index, states, last, known in part["parts"]:
                rows = torch.from_numpy(index).to(self.device)
                for table, old in zip(self._states[side], states, strict=True):
                    table[rows] = old
                self._last[side][index], self._known[side][index] = last, known
        items = len(self._last["item"])
        self._has_features = self._has_features[:items]
        if self._features is not None:
            self._features = self._features[:items]
        self.buffer.restore_rows(saved["buffer"])  # type: ignore[arg-type]
        return self

    def load_state_dict(self, state: dict[str, object]) -> IncrementalUpdater:
        """Restore a :meth:`state_dict` onto this object's device; returns ``self``."""
        if (state["embedding_dim"], state["num_layers"]) != (self.embedding_dim, self.num_layers):
            raise ValueError(
                f"state is for d={state['embedding_dim']}, {state['num_layers']} layer(s); this "
                f"updater has d={self.embedding_dim}, {self.num_layers} layer(s)"
            )
        self.updater.load_state_dict(state["updater"])  # type: ignore[arg-type]
        self.scale = float(state["scale"])  # type: ignore[arg-type]
        self.base_items = int(state.get("base_items", self.base_items))  # type: ignore[call-overload]
        self.buffer.load_state_dict(state["buffer"])  # type: ignore[arg-type]
        for s in SIDES:
            self._states[s] = [t.to(self.device).clone() for t in state[f"{s}_states"]]  # type: ignore[attr-defined]
            self._last[s] = np.array(state[f"{s}_last_update"], dtype=np.float64)
            self._known[s] = np.array(state[f"{s}_known"], dtype=bool)
        feats = state["item_features"]
        self._features = None if feats is None else feats.to(self.device)  # type: ignore[attr-defined]
        self._has_features = np.array(state["item_has_features"], dtype=bool)
        return self

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_users={self.num_users}, num_items={self.num_items}, "
                f"embedding_dim={self.embedding_dim}, num_layers={self.num_layers}, "
                f"num_neighbours={self.buffer.num_neighbours}, device='{self.device}')")
