"""Data-parallel LightGCN on CPU (issue 14, "past one machine"): one process against
``--processes`` gloo processes on the same synthetic graph, same seed and epochs.

    python bench/data_parallel.py [--events 200000] [--processes 2] [--epochs 2]

Prints the wall time of each fit, their ratio (one process is the in-process reference)
and the largest absolute difference between the two fits' embeddings (the same weights up
to float summation order: streamrec.parallel_fit). On one machine the processes share its
cores, so the ratio says what the gradient exchange costs, not a speed-up; across machines
or GPUs each process brings its own.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import LightGCN  # noqa: E402
from models.base import InteractionGraph  # noqa: E402
from stream.synthetic import generate  # noqa: E402
from streamrec.parallel_fit import fit_data_parallel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    s = generate(n_events=args.events, seed=0)
    graph = InteractionGraph.from_arrays(s.user, s.item, s.ts)
    kwargs = dict(embedding_dim=args.dim, epochs=args.epochs, progress=False, device="cpu")
    cores = torch.get_num_threads()
    started = time.perf_counter()
    one = LightGCN(**kwargs).fit(graph)
    t_one = time.perf_counter() - started
    started = time.perf_counter()
    many = fit_data_parallel(LightGCN(**kwargs), graph, processes=args.processes,
                             threads=max(1, cores // args.processes))
    t_many = time.perf_counter() - started
    diff = max(float((many.user_embeddings() - one.user_embeddings()).abs().max()),
               float((many.item_embeddings() - one.item_embeddings()).abs().max()))
    print(f"LightGCN, {graph.num_edges} events, {graph.num_users} users, {graph.num_items} "
          f"items, dim {args.dim}, {args.epochs} epochs, {cores} torch threads in all")
    print("| fit | wall s | vs one process | max abs difference |")
    print("| --- | --- | --- | --- |")
    print(f"| one process | {t_one:.1f} | 1.00x | |")
    print(f"| {args.processes} gloo processes | {t_many:.1f} | {t_many / t_one:.2f}x | "
          f"{diff:.2e} |")


if __name__ == "__main__":
    main()
