"""Fit a BPR-trained model (LightGCN, MF-BPR) in several local processes with
``torch.distributed`` (gloo, CPU): data parallel over the edges of every mini-batch
(:mod:`models.data_parallel`), the same embeddings as one process within float tolerance.

It is the first piece of the multi-machine path (docs/scaling.md): the same worker runs
under ``torchrun`` across machines with ``init_method="env://"``, and with the NCCL backend
one GPU per process.
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models.base import InteractionGraph, Recommender
from models.bpr import BPRRecommender
from models.data_parallel import DataParallel


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, world_size: int, port: int, backend: str, threads: int,
            model: BPRRecommender, graph: InteractionGraph, valid: InteractionGraph | None,
            out: str) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        if rank:
            model.progress = False  # one progress bar, rank 0's
        model.fit(graph, valid, parallel=DataParallel(rank, world_size))
        if rank == 0:
            assert model.module_ is not None
            state = {k: v.detach().cpu().clone() for k, v in model.module_.state_dict().items()}
            torch.save({"state": state, "history": model.history_}, out)
    finally:
        dist.destroy_process_group()


def fit_data_parallel(model: BPRRecommender, graph: InteractionGraph,
                      valid: InteractionGraph | None = None, *, processes: int = 2,
                      backend: str = "gloo", threads: int | None = None) -> BPRRecommender:
    """Fit ``model`` on ``graph`` (early stopping on ``valid``) in ``processes`` local
    processes; returns ``model``, fitted. ``threads``: torch threads per process (default:
    the CPU count divided by ``processes``, at least 1). One process fits in this process.

    A worker's failure stops the others and is raised here with its traceback
    (``torch.multiprocessing.ProcessRaisedException``).
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if processes == 1:
        return model.fit(graph, valid)
    threads = threads or max(1, (os.cpu_count() or 1) // processes)
    with tempfile.TemporaryDirectory(prefix="streamrec-ddp-") as tmp:
        out = os.path.join(tmp, "rank0.pt")
        mp.start_processes(_worker, nprocs=processes, start_method="spawn", join=True,
                           args=(processes, _free_port(), backend, threads, model, graph,
                                 valid, out))
        # our own file from the worker we started: the history is a plain dataclass
        fitted = torch.load(out, weights_only=False)
    return model.load_fitted(graph, fitted["state"], fitted["history"])


@dataclass(frozen=True)
class ProcessesFit:
    """Fits BPR-trained models (LightGCN, MF-BPR) in ``processes`` local processes and any
    other model in this one: ``ProcessesFit(2)(model, graph, valid)`` returns ``model``
    fitted. What ``streamrec retrain --processes N`` fits with.

    >>> ProcessesFit(0)
    Traceback (most recent call last):
    ...
    ValueError: processes must be >= 1, got 0
    """

    processes: int = 1

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")

    def __call__(self, model: Recommender, graph: InteractionGraph,
                 valid: InteractionGraph | None = None) -> Recommender:
        if self.processes > 1 and isinstance(model, BPRRecommender):
            return fit_data_parallel(model, graph, valid, processes=self.processes)
        return model.fit(graph, valid)
