"""PinSage (Ying et al., KDD 2018): item embeddings from importance-pooled random-walk
neighbourhoods, trained with a max-margin loss on co-engaged item pairs, negatives shared
across the mini-batch and curriculum hard negatives; mini-batches come from background
producer threads while the model trains.

Users are not nodes of the model: a user's embedding is the recency-weighted pool of the
embeddings of the items they touched most recently
(:func:`models.pinsage_layers.recency_pooled_users`).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models.base import InteractionGraph, Recommender, resolve_device
from models.graph_ops import item_counts
from models.negatives import NEGATIVE_SAMPLERS, make_negative_sampler
from models.pinsage_layers import PinSageConv, PinSageEncoder, recency_pooled_users
from models.pinsage_sampler import PinSageBatch, PinSageBatchMaker, co_engagement_pairs
from models.prefetch import BackgroundBatches
from models.random_walks import ItemWalker
from models.training import EarlyStopping, TrainHistory, make_adam, recall_at_k

__all__ = ["PinSage", "PinSageConv", "PinSageEncoder"]


class PinSage(Recommender):
    """PinSage recommender over the item graph induced by user co-engagement.

    Args:
        embedding_dim: ``d`` (default: ``64``).
        num_layers: convolve layers (default: ``2``).
        num_walks: ``T`` walks per item for its neighbourhood (default: ``10``).
        walk_length: item steps per walk; ``None`` picks ``ceil(4 * top_k / num_walks)``
            so ``T * L`` visits are ~4x the kept neighbours (default: ``None`` -> 10).
        walk_restart_prob: restart probability of the neighbourhood walks (default: ``0.3``).
        top_k: neighbours kept per item, the most visited (default: ``25``).
        margin: of the max-margin loss ``max(0, z_q.z_n - z_q.z_p + margin)`` (default: ``0.1``).
        num_negatives: negatives shared by every query of a batch (default: ``500``).
        negative_sampler: distribution of the shared negatives: ``"uniform"``,
            ``"popularity"`` or ``"in_batch"`` (default: ``"uniform"``).
        hard_negatives: curriculum: at epoch ``n`` every query gets ``n - 1`` hard negatives
            (default: ``True``).
        max_hard_negatives: cap on hard negatives per query (default: ``6``).
        hard_negative_band: personalised-PageRank visit ranks hard negatives come from, for
            catalogues of ``band_reference_items`` or more; smaller catalogues scale it
            down proportionally (default: ``(2000, 5000)``).
        band_reference_items: see ``hard_negative_band`` (default: ``100_000``).
        hard_negative_visits: PPR walk visits per item to rank the band; ``None`` is
            ``min(2 * band_end, 10_000)`` (default: ``None``).
        epochs: maximum passes over the positive pairs (default: ``10``).
        batch_size: positive pairs per step (default: ``512``).
        lr: Adam learning rate (default: ``1e-3``).
        patience, eval_every, k: early stopping on validation Recall@``k`` as in
            :class:`models.bpr.BPRRecommender` (defaults: ``3``, ``1``, ``20``).
        user_history: recent items pooled into a user embedding (default: ``50``).
        recency_half_life_seconds: an event's pooling weight halves per this age, measured
            from the user's newest event (default: 7 days).
        item_features: optional float ``[num_items, F]`` content features; layer 0 then
            projects them and :meth:`embed_new_items` embeds unseen items (default: ``None``,
            learned id embeddings).
        num_workers: batch-producer threads; 0 builds batches inline (default: ``2``).
            While training, torch's intra-op thread count is lowered by ``num_workers``
            (at least 1 left) so producers and the model do not oversubscribe the cores;
            it is restored afterwards.
        queue_size: finished batches each producer may hold (default: ``4``).
        seed: the only source of randomness (default: ``0``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:n]"`` (default: ``"auto"``).
        progress: tqdm bar with loss and validation metric (default: ``True``).

    Positive pairs are consecutive distinct items of a user's time-ordered history (see
    :mod:`models.pinsage_sampler`). After :meth:`fit`: ``history_``, ``neighbors_`` and
    ``neighbor_weights_`` ``[I, top_k]``, and ``timings_`` (seconds per phase).

    >>> g = InteractionGraph.from_arrays([0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 3, 4], range(6))
    >>> model = PinSage(embedding_dim=8, epochs=2, num_negatives=4, progress=False).fit(g)
    >>> model.item_embeddings().shape, model.user_embeddings().shape
    (torch.Size([5, 8]), torch.Size([3, 8]))
    """

    name = "pinsage"
    _param_names = (
        "embedding_dim", "num_layers", "num_walks", "walk_length", "walk_restart_prob",
        "top_k", "margin", "num_negatives", "negative_sampler", "hard_negatives",
        "max_hard_negatives", "hard_negative_band", "band_reference_items",
        "hard_negative_visits", "epochs", "batch_size", "lr", "patience", "eval_every", "k",
        "user_history", "recency_half_life_seconds", "num_workers", "queue_size", "seed",
        "device", "progress",
    )

    def __init__(
        self, *, embedding_dim: int = 64, num_layers: int = 2, num_walks: int = 10,
        walk_length: int | None = None, walk_restart_prob: float = 0.3, top_k: int = 25,
        margin: float = 0.1, num_negatives: int = 500, negative_sampler: str = "uniform",
        hard_negatives: bool = True, max_hard_negatives: int = 6,
        hard_negative_band: tuple[int, int] = (2000, 5000), band_reference_items: int = 100_000,
        hard_negative_visits: int | None = None, epochs: int = 10, batch_size: int = 512,
        lr: float = 1e-3, patience: int = 3, eval_every: int = 1, k: int = 20,
        user_history: int = 50, recency_half_life_seconds: float = 7 * 86400.0,
        item_features: torch.Tensor | None = None, num_workers: int = 2, queue_size: int = 4,
        seed: int = 0, device: str = "auto", progress: bool = True,
    ) -> None:
        at_least_one = dict(
            embedding_dim=embedding_dim, num_layers=num_layers, num_walks=num_walks,
            top_k=top_k, num_negatives=num_negatives, epochs=epochs, batch_size=batch_size,
            patience=patience, eval_every=eval_every, k=k, user_history=user_history,
            queue_size=queue_size,
        )
        for arg, value in at_least_one.items():
            if value < 1:
                raise ValueError(f"{arg} must be >= 1, got {value}")
        if not 0.0 <= walk_restart_prob < 1.0 or lr <= 0 or margin < 0 or num_workers < 0:
            raise ValueError("need 0 <= walk_restart_prob < 1, lr > 0, margin >= 0 and "
                             "num_workers >= 0")
        if walk_length is not None and walk_length < 1:
            raise ValueError(f"walk_length must be >= 1 or None, got {walk_length}")
        if negative_sampler not in NEGATIVE_SAMPLERS:
            raise ValueError(f"unknown negative_sampler {negative_sampler!r}; "
                             f"choose one of {NEGATIVE_SAMPLERS}")
        if not 0 <= hard_negative_band[0] < hard_negative_band[1]:
            raise ValueError(f"hard_negative_band must be (lo, hi) with 0 <= lo < hi, "
                             f"got {hard_negative_band}")
        if item_features is not None and item_features.dim() != 2:
            raise ValueError("item_features must be a 2-D tensor [num_items, F]")
        resolve_device(device)
        self.embedding_dim = embedding_dim
        self.num_layers = num_layers
        self.num_walks = num_walks
        self.walk_length = walk_length
        self.walk_restart_prob = walk_restart_prob
        self.top_k = top_k
        self.margin = margin
        self.num_negatives = num_negatives
        self.negative_sampler = negative_sampler
        self.hard_negatives = hard_negatives
        self.max_hard_negatives = max_hard_negatives
        self.hard_negative_band = hard_negative_band
        self.band_reference_items = band_reference_items
        self.hard_negative_visits = hard_negative_visits
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.eval_every = eval_every
        self.k = k
        self.user_history = user_history
        self.recency_half_life_seconds = recency_half_life_seconds
        self.item_features = item_features
        self.num_workers = num_workers
        self.queue_size = queue_size
        self.seed = seed
        self.device = device
        self.progress = progress
        self.module_: PinSageEncoder | None = None
        self.history_: TrainHistory | None = None
        self.neighbors_: np.ndarray | None = None
        self.neighbor_weights_: np.ndarray | None = None
        self.timings_: dict[str, float] = {}
        self._users: torch.Tensor | None = None
        self._items: torch.Tensor | None = None

    # -- derived settings -------------------------------------------------------------
    def effective_walk_length(self) -> int:
        return self.walk_length or math.ceil(4 * self.top_k / self.num_walks)

    def effective_band(self, num_items: int) -> tuple[int, int]:
        """The hard-negative rank band for a catalogue of ``num_items``."""
        scale = min(1.0, num_items / self.band_reference_items)
        lo = max(1, round(self.hard_negative_band[0] * scale))
        return lo, max(lo + 1, round(self.hard_negative_band[1] * scale))

    # -- training ---------------------------------------------------------------------
    def fit(self, graph: InteractionGraph, valid: InteractionGraph | None = None) -> PinSage:
        """Sample neighbourhoods, then train on ``graph``'s co-engagement pairs; ``valid``
        drives early stopping on Recall@``k`` of the recency-pooled user embeddings."""
        if valid is not None and valid.num_items != graph.num_items:
            raise ValueError(f"valid has {valid.num_items} items but the training graph has "
                             f"{graph.num_items}; they must share the item index space")
        if self.item_features is not None and len(self.item_features) != graph.num_items:
            raise ValueError(f"item_features has {len(self.item_features)} rows but the graph "
                             f"has {graph.num_items} items")
        query, positive = co_engagement_pairs(graph)
        if not len(query):
            raise ValueError("no user engaged with two distinct items: PinSage has no positive "
                             "pairs to train on")
        device = resolve_device(self.device)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        walker = ItemWalker.from_graph(graph)
        nbrs, weights = walker.neighborhoods(
            np.arange(graph.num_items), self.num_walks, self.effective_walk_length(),
            self.top_k, self.walk_restart_prob, seed=self.seed,
        )
        timings["neighborhoods"] = time.perf_counter() - start
        self.neighbors_, self.neighbor_weights_ = nbrs, weights
        nbrs_t, w_t = torch.from_numpy(nbrs).to(device), torch.from_numpy(weights).to(device)
        features = None if self.item_features is None else self.item_features.float().to(device)

        module = PinSageEncoder(graph.num_items, self.embedding_dim, self.num_layers,
                                None if features is None else features.shape[1])
        module.reset_parameters(torch.Generator().manual_seed(self.seed))
        module.to(device)
        optimizer = make_adam(module.parameters(), self.lr)
        sampler = make_negative_sampler(self.negative_sampler, graph.num_items,
                                        item_counts=item_counts(graph), seed=self.seed)
        rng = np.random.default_rng(self.seed)
        stopper, history = EarlyStopping(self.patience), TrainHistory()
        hard_pool: np.ndarray | None = None
        num_batches = math.ceil(len(query) / self.batch_size)
        bar = tqdm(total=self.epochs * num_batches, desc=self.name, unit="batch",
                   disable=not self.progress, dynamic_ncols=True)
        postfix: dict[str, str] = {}
        try:
            for epoch in range(1, self.epochs + 1):
                num_hard = min(epoch - 1, self.max_hard_negatives) if self.hard_negatives else 0
                if num_hard and hard_pool is None:
                    t0 = time.perf_counter()
                    hard_pool = self._hard_pool(walker, graph.num_items)
                    timings["hard_negative_pool"] = time.perf_counter() - t0
                perm = rng.permutation(len(query))
                maker = PinSageBatchMaker(
                    query[perm], positive[perm], nbrs, weights, self.num_layers,
                    self.batch_size, sampler, self.num_negatives, hard_pool, num_hard,
                    self.seed, epoch,
                )
                t0 = time.perf_counter()
                history.loss.append(self._train_epoch(module, optimizer, maker, features,
                                                      device, bar))
                history.epoch_seconds.append(time.perf_counter() - t0)
                postfix.update(epoch=str(epoch), loss=f"{history.loss[-1]:.4f}")
                if valid is not None and (epoch % self.eval_every == 0 or epoch == self.epochs):
                    users, items = self._embed(module, graph, nbrs_t, w_t, features)
                    metric = recall_at_k(users, items, graph, valid, self.k)
                    if stopper.record(metric, module, epoch, history, postfix, bar, self.k):
                        break
                bar.set_postfix(postfix)
        finally:
            bar.close()
        stopper.finish(module, history, validated=valid is not None)
        users, items = self._embed(module, graph, nbrs_t, w_t, features)
        self.module_, self.history_, self.timings_ = module, history, timings
        self._users, self._items = users.float().cpu(), items.float().cpu()
        return self

    def _train_epoch(
        self, module: PinSageEncoder, optimizer: torch.optim.Optimizer,
        maker: PinSageBatchMaker, features: torch.Tensor | None, device: torch.device,
        bar: tqdm,
    ) -> float:
        """One pass over the pairs; batches are built by the producer threads meanwhile.
        Returns the mean batch loss."""
        module.train()
        total = torch.zeros((), device=device)
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads - self.num_workers))
        try:
            with BackgroundBatches(maker, maker.num_batches, self.num_workers,
                                   self.queue_size) as batches:
                for batch in batches:
                    loss = self._loss(module, batch.to(device), features)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.detach()
                    bar.update(1)
        finally:
            torch.set_num_threads(threads)
        return float(total) / maker.num_batches

    def _hard_pool(self, walker: ItemWalker, num_items: int, pool_size: int = 16) -> np.ndarray:
        band = self.effective_band(num_items)
        visits = self.hard_negative_visits or max(64, min(2 * band[1], 10_000))
        return walker.rank_band_samples(np.arange(num_items), band, pool_size, visits,
                                        seed=self.seed + 1)

    def _loss(self, module: PinSageEncoder, batch: PinSageBatch,
              features: torch.Tensor | None) -> torch.Tensor:
        z = module(batch.block, features)
        zq = z[batch.query]
        pos = (zq * z[batch.positive]).sum(-1, keepdim=True)  # [B, 1]
        neg = zq @ z[batch.negative].T  # [B, S]
        if batch.hard_negative.shape[1]:
            hard = (zq.unsqueeze(1) * z[batch.hard_negative]).sum(-1)  # [B, H]
            neg = torch.cat([neg, hard], dim=1)
        return F.relu(neg - pos + self.margin).mean()

    @torch.no_grad()
    def _embed(self, module: PinSageEncoder, graph: InteractionGraph, nbrs: torch.Tensor,
               weights: torch.Tensor, features: torch.Tensor | None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        module.eval()
        items = module.full(nbrs, weights, features)
        users = recency_pooled_users(graph.user, graph.item, graph.ts, graph.weight, items,
                                     graph.num_users, self.user_history,
                                     self.recency_half_life_seconds)
        return users, items

    # -- the Recommender interface ----------------------------------------------------
    def _fitted(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._users is None or self._items is None:
            raise RuntimeError("PinSage is not fitted; call fit(graph) first")
        return self._users, self._items

    def user_embeddings(self) -> torch.Tensor:
        return self._fitted()[0]

    def item_embeddings(self) -> torch.Tensor:
        return self._fitted()[1]

    @torch.no_grad()
    def embed_new_items(self, features: torch.Tensor) -> torch.Tensor:
        """float32 CPU ``[N, d]`` embeddings of brand-new items from features ``[N, F]``;
        needs a model fitted with ``item_features``."""
        self._fitted()
        assert self.module_ is not None
        device = next(self.module_.parameters()).device
        return self.module_.from_features(features.float().to(device)).cpu()

    def hyper_parameters(self) -> dict[str, object]:
        params = {name: getattr(self, name) for name in self._param_names}
        params["item_features"] = None if self.item_features is None else list(
            self.item_features.shape)
        return params

    def __repr__(self) -> str:
        keys = ("embedding_dim", "num_layers", "num_walks", "top_k", "epochs", "batch_size",
                "seed")
        return "PinSage(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in keys) + ")"
