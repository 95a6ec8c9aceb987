"""Data-parallel BPR training over ``torch.distributed``: every process holds the whole
model and graph, takes its share of every mini-batch (a shard of the batch's edges) and the
gradients are summed across processes before each Adam step.

This is the DistributedDataParallel scheme of PyG's and DGL's multi-GPU link-prediction
examples, written out because :func:`models.training.train_bpr` calls ``module.batch``
rather than ``forward`` (which DDP hooks). Every process draws the same permutation and the
same negatives from the shared seed and scales its loss by its share of the batch, so the
summed gradient is the one-process gradient of the whole batch: the result equals a
one-process fit up to float summation order.

>>> DataParallel(rank=1, world_size=2).share(5)
slice(3, 5, None)
>>> DataParallel(rank=0, world_size=2).share(5)
slice(0, 3, None)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class DataParallel:
    """This process's place in data-parallel training.

    Args:
        rank: this process's index, ``0 <= rank < world_size``.
        world_size: number of processes; they must all have joined the default process
            group (``torch.distributed.init_process_group``) before training starts, unless
            ``world_size`` is 1.
    """

    def __init__(self, rank: int, world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        self.rank, self.world_size = int(rank), int(world_size)

    @classmethod
    def from_process_group(cls) -> DataParallel:
        """The rank and size of the initialised default process group."""
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised; call "
                               "init_process_group first (streamrec.parallel_fit does)")
        return cls(dist.get_rank(), dist.get_world_size())

    def __repr__(self) -> str:
        return f"DataParallel(rank={self.rank}, world_size={self.world_size})"

    def share(self, batch_size: int) -> slice:
        """This process's contiguous share of a batch of ``batch_size`` rows (the first
        ``batch_size % world_size`` processes take one row more)."""
        base, extra = divmod(batch_size, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def sum_gradients(self, module: nn.Module) -> None:
        """Sum every parameter's gradient over the processes, in place. A parameter without
        a gradient here (an empty share) contributes zeros, so every process joins every
        collective in the same order."""
        if self.world_size == 1:
            return
        for param in module.parameters():
            if not param.requires_grad:
                continue
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the processes (a new tensor)."""
        out = value.detach().clone()
        if self.world_size > 1:
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out
