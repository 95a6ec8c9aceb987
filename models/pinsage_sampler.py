"""PinSage's training data: co-engagement positive pairs, and mini-batches with their
importance-neighbourhood computation graphs ("blocks"), shared negatives and curriculum hard
negatives. Everything here is numpy/torch on CPU and thread-safe, for the batch producers.

Positive pairs are *consecutive* distinct items of a user's time-ordered history
``(i_t, i_{t+1})``: the paper's "user engaged with item j right after item q", which keeps
pairs local in time and costs one pair per event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.base import InteractionGraph
from models.graph_ops import csr_transpose, sparse_csr
from models.negatives import NegativeSampler


def co_engagement_pairs(graph: InteractionGraph) -> tuple[np.ndarray, np.ndarray]:
    """``(query, positive)`` int64 ``[P]`` each: consecutive distinct items per user.

    >>> g = InteractionGraph.from_arrays([0, 0, 0, 1], [5, 3, 3, 1], [3.0, 1.0, 2.0, 0.0])
    >>> [a.tolist() for a in co_engagement_pairs(g)]
    [[3], [5]]
    """
    order = np.lexsort((graph.item, graph.ts, graph.user))
    user, item = graph.user[order], graph.item[order]
    keep = (user[1:] == user[:-1]) & (item[1:] != item[:-1])
    return item[:-1][keep].copy(), item[1:][keep].copy()


@dataclass(frozen=True)
class BlockLayer:
    """One convolution of a :class:`Block`: output row ``r`` is node ``self_idx[r]`` of the
    layer below, pooling rows ``nbr_idx[r]`` with weights ``nbr_w[r]`` (``[N, K]`` each).
    ``adj`` ``[N, M]`` is the same pooling as a sparse CSR matrix (zero weights dropped) and
    ``adj_t`` ``[M, N]`` its transpose, built here so the backward pass needs no transpose.

    >>> block, _ = build_block(np.array([0]), np.array([[1], [0]]), np.ones((2, 1)), 1)
    >>> layer = block.layers[0]
    >>> layer.nbr_idx.tolist(), layer.adj.to_dense().tolist()
    ([[1]], [[0.0, 1.0]])
    """

    self_idx: torch.Tensor
    nbr_idx: torch.Tensor
    nbr_w: torch.Tensor
    adj: torch.Tensor
    adj_t: torch.Tensor

    def to(self, device: torch.device) -> BlockLayer:
        return BlockLayer(*(t.to(device) for t in (self.self_idx, self.nbr_idx, self.nbr_w,
                                                     self.adj, self.adj_t)))


@dataclass(frozen=True)
class Block:
    """The computation graph of a set of target items through ``len(layers)`` convolutions.

    ``input_ids`` ``[N0]`` are the items whose layer-0 representation is needed; layer
    ``l`` (bottom-up) maps the rows of layer ``l-1``'s output to its own rows. The last
    layer's rows are ``targets`` (sorted, distinct).

    >>> block, _ = build_block(np.array([1]), np.array([[1], [2], [0]]), np.ones((3, 1)), 2)
    >>> block.input_ids.tolist(), len(block.layers)
    ([0, 1, 2], 2)
    """

    input_ids: torch.Tensor
    layers: tuple[BlockLayer, ...]
    targets: torch.Tensor

    def to(self, device: torch.device) -> Block:
        return Block(self.input_ids.to(device), tuple(layer.to(device) for layer in self.layers),
                     self.targets.to(device))


def _block_layer(self_idx: np.ndarray, nbr_idx: np.ndarray, nbr_w: np.ndarray,
                 num_below: int) -> BlockLayer:
    keep = nbr_w > 0
    indptr = np.zeros(len(self_idx) + 1, dtype=np.int64)
    np.cumsum(keep.sum(1), out=indptr[1:])
    cols, vals = nbr_idx[keep], np.ascontiguousarray(nbr_w[keep], dtype=np.float32)
    t_indptr, t_cols, t_vals = csr_transpose(indptr, cols, vals, num_below)
    return BlockLayer(
        torch.from_numpy(self_idx), torch.from_numpy(nbr_idx),
        torch.from_numpy(np.ascontiguousarray(nbr_w, dtype=np.float32)),
        sparse_csr(indptr, cols, vals, (len(self_idx), num_below)),
        sparse_csr(t_indptr, t_cols, t_vals, (num_below, len(self_idx))),
    )


def build_block(
    targets: np.ndarray, neighbors: np.ndarray, weights: np.ndarray, num_layers: int
) -> tuple[Block, np.ndarray]:
    """The :class:`Block` of ``targets`` ``[T]`` (any order, repeats allowed) over the
    neighbourhood table ``neighbors``/``weights`` ``[I, K]``, and the row of every target
    in the block's output ``[T]``. Node sets are found by marking a ``[I]`` array, not by
    sorting, so a batch costs O(I + nodes * K).

    >>> nbrs, w = np.array([[1], [0], [1]]), np.ones((3, 1), np.float32)
    >>> block, rows = build_block(np.array([2, 2]), nbrs, w, num_layers=2)
    >>> block.input_ids.tolist(), block.targets.tolist(), rows.tolist()
    ([0, 1, 2], [2], [0, 0])
    """
    num_items = len(neighbors)
    mark = np.zeros(num_items, dtype=bool)
    remap = np.empty(num_items, dtype=np.int64)
    mark[targets] = True
    nodes = np.flatnonzero(mark)
    remap[nodes] = np.arange(len(nodes))
    rows, top = remap[targets], nodes
    layers = []
    for _ in range(num_layers):
        nbr = neighbors[nodes]
        mark[nbr.ravel()] = True  # nodes are still marked from the level above
        below = np.flatnonzero(mark)
        remap[below] = np.arange(len(below))
        layers.append(_block_layer(remap[nodes], remap[nbr], weights[nodes], len(below)))
        nodes = below
    return Block(torch.from_numpy(nodes), tuple(reversed(layers)), torch.from_numpy(top)), rows


@dataclass(frozen=True)
class PinSageBatch:
    """A mini-batch: the block of all items it touches and, as rows of the block's
    output, the queries ``[B]``, positives ``[B]``, shared negatives ``[S]`` and hard
    negatives ``[B, H]`` (``H`` may be 0); see :class:`PinSageBatchMaker` for an example."""

    block: Block
    query: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    hard_negative: torch.Tensor

    def to(self, device: torch.device) -> PinSageBatch:
        return PinSageBatch(self.block.to(device), self.query.to(device),
                            self.positive.to(device), self.negative.to(device),
                            self.hard_negative.to(device))


class PinSageBatchMaker:
    """Builds batch ``b`` of one epoch from a seed of its own, so worker threads can build
    batches in any order and the epoch is still deterministic.

    Args:
        query, positive: the epoch's pairs ``[P]`` (already shuffled).
        neighbors, weights: importance neighbourhoods ``[I, K]``.
        num_layers: convolutions per embedding.
        batch_size: pairs per batch.
        sampler: the shared-negative sampler.
        num_negatives: shared negatives per batch.
        hard_pool: ``[I, P]`` hard-negative candidates per item, or ``None``.
        num_hard: hard negatives per query this epoch (needs ``hard_pool``).
        seed: base seed, combined with ``epoch`` and the batch index.
        epoch: the epoch number.

    >>> from models.negatives import UniformNegativeSampler
    >>> nbrs, w = np.array([[1], [0], [1]]), np.ones((3, 1), np.float32)
    >>> maker = PinSageBatchMaker(np.array([0, 1, 2]), np.array([1, 0, 1]), nbrs, w, 2, 2,
    ...                           UniformNegativeSampler(3), 4, None, 0, seed=0, epoch=1)
    >>> batch = maker(0)
    >>> maker.num_batches, batch.block.targets[batch.query].tolist(), batch.negative.shape
    (2, [0, 1], torch.Size([4]))
    """

    def __init__(
        self, query: np.ndarray, positive: np.ndarray, neighbors: np.ndarray,
        weights: np.ndarray, num_layers: int, batch_size: int, sampler: NegativeSampler,
        num_negatives: int, hard_pool: np.ndarray | None, num_hard: int, seed: int, epoch: int,
    ) -> None:
        if num_hard and hard_pool is None:
            raise ValueError("hard negatives were asked for without a hard_pool")
        self.query, self.positive = query, positive
        self.neighbors, self.weights, self.num_layers = neighbors, weights, num_layers
        self.batch_size, self.sampler, self.num_negatives = batch_size, sampler, num_negatives
        self.hard_pool, self.num_hard, self.seed, self.epoch = hard_pool, num_hard, seed, epoch

    @property
    def num_batches(self) -> int:
        return -(-len(self.query) // self.batch_size)

    def __call__(self, b: int) -> PinSageBatch:
        rng = np.random.default_rng([self.seed, self.epoch, b])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        span = slice(b * self.batch_size, (b + 1) * self.batch_size)
        q, p = self.query[span], self.positive[span]
        neg = self.sampler.sample_shared(torch.from_numpy(p), self.num_negatives, gen).numpy()
        hard = np.empty((len(q), 0), dtype=np.int64)
        if self.num_hard and self.hard_pool is not None:
            cols = rng.integers(0, self.hard_pool.shape[1], size=(len(q), self.num_hard))
            hard = self.hard_pool[q[:, None], cols]
        parts = [q, p, neg, hard.ravel()]
        block, rows = build_block(np.concatenate(parts), self.neighbors, self.weights,
                                  self.num_layers)
        bounds = np.cumsum([0, *(len(x) for x in parts)])
        rows_t = torch.from_numpy(rows)
        return PinSageBatch(
            block, rows_t[bounds[0]:bounds[1]], rows_t[bounds[1]:bounds[2]],
            rows_t[bounds[2]:bounds[3]], rows_t[bounds[3]:bounds[4]].view(len(q), self.num_hard),
        )
