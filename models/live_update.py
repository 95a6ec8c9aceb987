"""Training of the incremental updater by ROLAND's live-update scheme (You et al., KDD 2022).

The last part of the retrain's training window (default: the last 20% of its events) is
held back and cut by time into micro-batches. Starting from base embeddings fitted on the
events before it, the updater ingests micro-batch ``k`` exactly as the consumer would
(:meth:`~models.incremental_updater.IncrementalUpdater.step`) and is trained to predict the
interactions of micro-batch ``k + 1`` (BPR, sampled negatives, dot product of the updated
user and item states). States are detached between micro-batches (truncated BPTT), and each
epoch replays the window from the base.

The last micro-batches are kept for validation: after every epoch (and before the first)
the window is replayed without gradients and the Recall@K of each validation micro-batch's
new interactions is measured from the states just before it. The best weights are kept,
the untrained ones included, so training never leaves the updater worse than it started
on that check. The trained module is published with its version
(:meth:`~models.updater.TemporalUpdater.to_bytes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models.base import InteractionGraph, Recommender, resolve_device
from models.incremental_updater import IncrementalUpdater, UpdateStep
from models.neighbour_buffer import NeighbourBuffer
from models.training import EarlyStopping, recall_at_k
from models.updater import TemporalUpdater

BaseFitter = Callable[[InteractionGraph], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LiveUpdateHistory:
    """What a live-update run did: the mean BPR loss of each epoch, the validation
    ``(epoch, recall@k)`` pairs (epoch 0: before training) and the epoch whose weights
    were kept.

    >>> LiveUpdateHistory(loss=[0.5], valid=[(0, 0.1), (1, 0.12)], best_epoch=1).best_epoch
    1
    """

    loss: list[float] = field(default_factory=list)
    valid: list[tuple[int, float]] = field(default_factory=list)
    best_epoch: int | None = None


def split_live_window(
    graph: InteractionGraph, holdout: float = 0.2, num_batches: int = 20
) -> tuple[InteractionGraph, list[np.ndarray]]:
    """The history (first ``1 - holdout`` of the events by time) and the held-back events cut
    into ``num_batches`` time-ordered micro-batches of near-equal size, as edge positions
    into ``graph``.

    >>> g = InteractionGraph.from_arrays([0, 1, 0, 1, 0], [0, 1, 1, 0, 1], [5, 1, 2, 3, 4])
    >>> history, batches = split_live_window(g, holdout=0.4, num_batches=2)
    >>> history.ts.tolist(), [b.tolist() for b in batches]
    ([1.0, 2.0, 3.0], [[4], [0]])
    """
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    if num_batches < 2:
        raise ValueError(f"num_batches must be >= 2 (one to ingest, one to predict), got "
                         f"{num_batches}")
    order = np.argsort(graph.ts, kind="stable")
    cut = int(round((1.0 - holdout) * graph.num_edges))
    held = order[cut:]
    if cut < 1 or len(held) < num_batches:
        raise ValueError(f"{graph.num_edges} events cannot give a history and {num_batches} "
                         f"held-back micro-batches with holdout={holdout}")
    in_history = np.zeros(graph.num_edges, bool)
    in_history[order[:cut]] = True
    return graph.subset(in_history), [b for b in np.array_split(held, num_batches) if len(b)]


def fit_base_with(model: Recommender) -> BaseFitter:
    """A base fitter that trains ``model`` (e.g. ``make_model("lightgcn", ...)``) on a graph
    and returns its ``(user [U, d], item [I, d])`` embeddings.

    >>> from models.mf import MFBPR
    >>> fit = fit_base_with(MFBPR(embedding_dim=4, epochs=1, progress=False))
    >>> [t.shape for t in fit(InteractionGraph.from_arrays([0, 1], [1, 0]))]
    [torch.Size([2, 4]), torch.Size([2, 4])]
    """
    def fit(graph: InteractionGraph) -> tuple[torch.Tensor, torch.Tensor]:
        model.fit(graph)
        return model.user_embeddings(), model.item_embeddings()
    return fit


def train_live_update(
    graph: InteractionGraph,
    base: tuple[torch.Tensor, torch.Tensor] | BaseFitter,
    updater: TemporalUpdater | None = None,
    *,
    holdout: float = 0.2,
    num_batches: int = 20,
    valid_batches: int = 4,
    epochs: int = 3,
    patience: int = 2,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    max_grad_norm: float = 5.0,
    num_neighbours: int = 20,
    unseen_only: bool = True,
    k: int = 20,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
    history: LiveUpdateHistory | None = None,
    **updater_kwargs: object,
) -> TemporalUpdater:
    """Train an incremental updater on the held-back end of ``graph`` (the retrain's snapshot).

    Args:
        graph: the training window; the last ``holdout`` of its events are held back.
        base: the base ``(user [U, d], item [I, d])`` embeddings fitted on the events before
            the held-back part, or a function that fits them on that history graph (see
            :func:`fit_base_with`).
        updater: the module to train in place (default: a new
            ``TemporalUpdater(d, seed=seed, **updater_kwargs)``).
        holdout: held-back share of the events (default: ``0.2``).
        num_batches: micro-batches the held-back part is cut into (default: ``20``).
        valid_batches: last micro-batches used only for validation; ``0`` trains on all and
            keeps the last epoch's weights (default: ``4``).
        epochs: maximum passes over the training micro-batches (default: ``3``).
        patience: validations without improvement before stopping (default: ``2``).
        lr: Adam learning rate (default: ``1e-3``).
        weight_decay: Adam weight decay (default: ``0.0``).
        max_grad_norm: gradient-norm clipping per step (default: ``5.0``).
        num_neighbours: ``N`` recent neighbours per node (default: ``20``); use the same
            when serving.
        unseen_only: predict only the interactions new to their user (the evaluation masks
            items a user has seen, so repeats would teach the updater to recall the past
            rather than what comes next) (default: ``True``).
        k: cut-off of the validation recall (default: ``20``).
        seed: the only source of randomness: initial weights and negatives (default: ``0``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:n]"`` (default: ``"auto"``).
        progress: show a tqdm bar (default: ``True``).
        history: if given, filled with the losses, validation scores and the kept epoch.

    Returns the trained module on CPU in eval mode. A step costs one updater pass over a
    micro-batch's nodes plus an overlay of the ``[U, d]`` and ``[I, d]`` state tables; a
    validation costs one pass over the window without gradients.
    """
    if not 0 <= valid_batches <= num_batches - 2:
        raise ValueError(f"valid_batches must be in [0, num_batches - 2 = {num_batches - 2}] "
                         f"so that at least one micro-batch pair is left to train on, "
                         f"got {valid_batches}")
    hist, batches = split_live_window(graph, holdout, num_batches)
    base_user, base_item = base(hist) if callable(base) else base
    base_user = torch.as_tensor(base_user, dtype=torch.float32)
    base_item = torch.as_tensor(base_item, dtype=torch.float32)
    if updater is None:
        updater = TemporalUpdater(base_user.shape[1], seed=seed, **updater_kwargs)  # type: ignore[arg-type]
    elif updater_kwargs:
        raise TypeError(f"updater_kwargs {sorted(updater_kwargs)} only apply to a new updater")
    device = resolve_device(device)
    history = history if history is not None else LiveUpdateHistory()
    start = NeighbourBuffer.from_graph(hist, num_neighbours).state_dict()

    def replay() -> IncrementalUpdater:
        buffer = NeighbourBuffer(num_neighbours).load_state_dict(start)
        inc = IncrementalUpdater(base_user, base_item, updater, buffer, device=device)
        return inc.grow(graph.num_users, graph.num_items)

    pairs = _prediction_pairs(graph, hist, batches, unseen_only)
    n_train = len(pairs) - valid_batches
    optimizer = torch.optim.Adam(updater.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    stopper = EarlyStopping(patience)
    if valid_batches:
        history.valid.append((0, _validate(replay(), graph, pairs, n_train, k)))
        stopper.step(history.valid[-1][1], updater, epoch=0)
    bar = tqdm(total=epochs * n_train, desc="live-update", unit="batch",
               disable=not progress, dynamic_ncols=True)
    try:
        for epoch in range(1, epochs + 1):
            inc = replay()
            updater.train()
            total, count = 0.0, 0
            for now, nxt, _ in pairs[:n_train]:
                with torch.enable_grad():
                    loss = _step_loss(inc, graph, now, nxt, rng)
                if loss is not None:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(updater.parameters(), max_grad_norm)
                    optimizer.step()
                    total, count = total + float(loss.detach()) * len(nxt), count + len(nxt)
                bar.update(1)
            history.loss.append(total / count if count else math.nan)
            postfix = {"loss": f"{history.loss[-1]:.4f}"}
            if valid_batches:
                history.valid.append((epoch, _validate(replay(), graph, pairs, n_train, k)))
                postfix[f"recall@{k}"] = f"{history.valid[-1][1]:.4f}"
                bar.set_postfix(postfix)
                if stopper.step(history.valid[-1][1], updater, epoch):
                    break
            bar.set_postfix(postfix)
    finally:
        bar.close()
    stopper.finish(updater, history, validated=bool(valid_batches))
    return updater.cpu().eval()


def _prediction_pairs(
    graph: InteractionGraph, hist: InteractionGraph, batches: list[np.ndarray],
    unseen_only: bool,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(ingest, predict, seen keys)`` per consecutive micro-batch pair: the events of
    micro-batch ``k``, those of ``k + 1`` to predict (only pairs new to their user with
    ``unseen_only``) and the ``user * num_items + item`` keys seen up to ``k``."""
    seen = np.unique(hist.user * graph.num_items + hist.item)
    pairs = []
    for now, nxt in zip(batches[:-1], batches[1:], strict=True):
        seen = np.union1d(seen, graph.user[now] * graph.num_items + graph.item[now])
        if unseen_only:
            nxt = nxt[~np.isin(graph.user[nxt] * graph.num_items + graph.item[nxt], seen)]
        pairs.append((now, nxt, seen))
    return pairs


def _ingest(inc: IncrementalUpdater, graph: InteractionGraph, events: np.ndarray) -> UpdateStep:
    return inc.step(graph.user[events], graph.item[events], graph.ts[events],
                    graph.weight[events])


@torch.no_grad()
def _validate(
    inc: IncrementalUpdater, graph: InteractionGraph,
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_train: int, k: int,
) -> float:
    """Mean Recall@``k`` of the validation pairs' new interactions (see the module doc)."""
    inc.updater.eval()
    scores = []
    for j, (now, nxt, seen) in enumerate(pairs):
        _ingest(inc, graph, now)
        if j < n_train:
            continue
        known = InteractionGraph(seen // graph.num_items, seen % graph.num_items,
                                 np.zeros(len(seen)), np.ones(len(seen), np.float32),
                                 graph.num_users, graph.num_items)
        try:
            scores.append(recall_at_k(inc.state_tables("user")[-1],
                                      inc.state_tables("item")[-1], known,
                                      graph.subset(_positions(graph, nxt)), k))
        except ValueError:  # no warm user with a new item in this micro-batch
            continue
    return float(np.mean(scores)) if scores else 0.0


def _positions(graph: InteractionGraph, events: np.ndarray) -> np.ndarray:
    mask = np.zeros(graph.num_edges, bool)
    mask[events] = True
    return mask


def _step_loss(
    inc: IncrementalUpdater, graph: InteractionGraph, now: np.ndarray, nxt: np.ndarray,
    rng: np.random.Generator,
) -> torch.Tensor | None:
    """Ingest micro-batch ``now``; BPR loss of predicting ``nxt`` (None without a gradient)."""
    step = _ingest(inc, graph, now)
    dev = inc.device
    users = inc.state_tables("user")[-1].index_put(
        (torch.from_numpy(step.user_idx).to(dev),), step.user_state)
    items = inc.state_tables("item")[-1].index_put(
        (torch.from_numpy(step.item_idx).to(dev),), step.item_state)
    if not len(nxt) or not (users.requires_grad or items.requires_grad):
        return None
    # Negatives: uniform over the items seen so far (an unseen item has no state worth ranking).
    seen = np.flatnonzero(inc.buffer.degree("item", np.arange(inc.num_items)) > 0)
    neg = seen[rng.integers(len(seen), size=len(nxt))]
    u = users[torch.from_numpy(graph.user[nxt]).to(dev)]
    pos = items[torch.from_numpy(graph.item[nxt]).to(dev)]
    neg_e = items[torch.from_numpy(neg).to(dev)]
    return -F.logsigmoid((u * pos).sum(-1) - (u * neg_e).sum(-1)).mean()
