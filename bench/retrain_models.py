"""Full-retrain benchmark: LightGCN (sparse CSR propagation) against PyG's stock LightGCN on
``edge_index``, and PinSage's epoch time and random-walk throughput, on a seeded synthetic
power-law graph. Prints figures; it is not a test.

    python bench/retrain_models.py                  # 1M events, ~5-10 minutes on 2 cores
    python bench/retrain_models.py --events 200000  # quicker

Both LightGCN variants run through the same BPR loop (models.training): same initial
weights, same shuffles, same negatives, same loss (PyG's BPRLoss with node_id = the batch's
user, positive and negative rows is the same formula), same (fused) Adam, so only the
propagation differs. Timings on a shared machine are noisy; the ratios within one run are
the figures to read.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch_geometric.nn.models import LightGCN as PyGLightGCN

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.base import InteractionGraph  # noqa: E402
from models.graph_ops import unique_edges, user_item_csr  # noqa: E402
from models.lightgcn import LightGCN, LightGCNEncoder  # noqa: E402
from models.negatives import make_negative_sampler  # noqa: E402
from models.pinsage import PinSage  # noqa: E402
from models.pinsage_sampler import co_engagement_pairs  # noqa: E402
from models.random_walks import ItemWalker  # noqa: E402
from models.training import (  # noqa: E402
    TrainConfig,
    bpr_loss,
    make_adam,
    recall_at_k,
    sample_negatives,
    train_bpr,
)


def power_law_graph(
    num_events: int, num_users: int, num_items: int, num_clusters: int = 50,
    in_cluster: float = 0.8, seed: int = 0,
) -> InteractionGraph:
    """Power-law user activity and item popularity; each user belongs to a cluster and
    draws ``in_cluster`` of their events from the cluster's items (so there is something
    to learn), the rest from the global popularity; timestamps span 30 days."""
    rng = np.random.default_rng(seed)
    user_w = (rng.permutation(num_users) + 1.0) ** -0.8
    users = np.minimum(np.searchsorted(np.cumsum(user_w / user_w.sum()), rng.random(num_events)),
                       num_users - 1)
    pop = (rng.permutation(num_items) + 1.0) ** -0.9
    item_cluster = rng.integers(num_clusters, size=num_items)
    user_cluster = rng.integers(num_clusters, size=num_users)
    items = np.empty(num_events, dtype=np.int64)
    local = rng.random(num_events) < in_cluster
    glob = np.cumsum(pop / pop.sum())
    items[~local] = np.minimum(np.searchsorted(glob, rng.random(int((~local).sum()))),
                               num_items - 1)
    for c in range(num_clusters):
        members = np.flatnonzero(item_cluster == c)
        sel = np.flatnonzero(local & (user_cluster[users] == c))
        cdf = np.cumsum(pop[members] / pop[members].sum())
        pick = np.minimum(np.searchsorted(cdf, rng.random(len(sel))), len(members) - 1)
        items[sel] = members[pick]
    ts = np.sort(rng.uniform(0, 30 * 86400, num_events))
    return InteractionGraph.from_arrays(users, items, ts, num_users=num_users,
                                        num_items=num_items)


def temporal_split(g: InteractionGraph, valid_fraction: float = 0.1):
    cut = np.quantile(g.ts, 1 - valid_fraction)
    return g.before(cut), g.subset(g.ts >= cut)


class PyGModule(nn.Module):
    """PyG's stock LightGCN on a plain edge_index, behind the loop's module interface."""

    def __init__(self, graph: InteractionGraph, init: torch.Tensor, num_layers: int) -> None:
        super().__init__()
        self.num_users = graph.num_users
        self.model = PyGLightGCN(init.shape[0], init.shape[1], num_layers)
        with torch.no_grad():
            self.model.embedding.weight.copy_(init)
        u, i = (torch.from_numpy(a) for a in unique_edges(graph))
        i = i + graph.num_users
        self.edge_index = torch.stack([torch.cat([u, i]), torch.cat([i, u])])

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.get_embedding(self.edge_index)
        return out[: self.num_users], out[self.num_users:]

    def batch(self, users: torch.Tensor, items: torch.Tensor):  # same gather as ours
        w = self.model.embedding.weight
        rows = torch.cat([users, items + self.num_users])
        out, ego = self.model.get_embedding(self.edge_index)[rows], w[rows]
        b = len(users)
        return out[:b], out[b:], ego[:b], ego[b:]


def ours_and_pyg(graph: InteractionGraph, dim: int, layers: int, seed: int):
    ours = LightGCN(embedding_dim=dim, num_layers=layers, seed=seed, device="cpu")
    module = ours.build_module(graph, torch.Generator().manual_seed(seed), torch.device("cpu"))
    assert isinstance(module, LightGCNEncoder)
    pyg = PyGModule(graph, module.embedding.weight.detach().clone(), layers)
    return module, pyg


def seconds_per_batch(modules: dict[str, nn.Module], graph: InteractionGraph, batches: int,
                      batch_size: int, seed: int = 0, warmup: int = 2) -> dict[str, float]:
    """Median seconds of one BPR step (propagate, loss, backward, Adam) per module. The
    modules take turns on identical batches, so load from other processes on a shared
    machine hits both alike; ``warmup`` untimed rounds first (a process's first sparse
    matmuls are slow)."""
    users, items = (torch.from_numpy(a) for a in unique_edges(graph))
    seen, gen = user_item_csr(graph), torch.Generator().manual_seed(seed)
    sampler = make_negative_sampler("uniform", graph.num_items, seed=seed)
    opts = {name: make_adam(m.parameters(), lr=1e-3) for name, m in modules.items()}
    times: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(batches + warmup):
        idx = torch.randint(len(users), (batch_size,), generator=gen)
        u, p = users[idx], items[idx]
        n = sample_negatives(sampler, u, p, seen, gen)
        for name, module in modules.items():
            start = time.perf_counter()
            ue, ie, ue0, ie0 = module.batch(u, torch.cat([p, n]))
            pe, ne = ie.split(len(u))
            loss = bpr_loss((ue * pe).sum(-1), (ue * ne).sum(-1), (ue0, ie0), 1e-4)
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t[warmup:])) for name, t in times.items()}


def describe(name: str, g: InteractionGraph) -> None:
    u, _ = unique_edges(g)
    print(f"{name}: {g.num_edges:,} events, {len(u):,} distinct edges, "
          f"{g.num_users:,} users, {g.num_items:,} items")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--small-events", type=int, default=100_000)
    ap.add_argument("--recall-epochs", type=int, default=5)
    ap.add_argument("--pyg-batches", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-pinsage", action="store_true")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")

    graph = power_law_graph(args.events, args.users, args.items, seed=args.seed)
    train, valid = temporal_split(graph)
    describe("big graph (train part)", train)
    bs = args.batch_size
    n_batches = -(-len(unique_edges(train)[0]) // bs)

    print(f"\n== LightGCN epoch time, d={args.dim}, K={args.layers}, batch {bs} "
          f"({n_batches} batches/epoch) ==")
    ours, pyg = ours_and_pyg(train, args.dim, args.layers, args.seed)
    step = seconds_per_batch({"ours": ours, "pyg": pyg}, train, args.pyg_batches, bs)
    ours_batch, pyg_batch = step["ours"], step["pyg"]
    del pyg
    start = time.perf_counter()
    model = LightGCN(embedding_dim=args.dim, num_layers=args.layers, epochs=1, batch_size=bs,
                     seed=args.seed, device="cpu", progress=False).fit(train)
    ours_epoch = model.history_.epoch_seconds[0]
    print(f"ours (sparse CSR):  {ours_batch * 1e3:8.1f} ms/batch (median of {args.pyg_batches}), "
          f"full epoch measured "
          f"{ours_epoch:7.1f} s (fit incl. setup {time.perf_counter() - start:.1f} s)")
    print(f"PyG edge_index:     {pyg_batch * 1e3:8.1f} ms/batch (median of {args.pyg_batches}, "
          f"same batches, interleaved), epoch EXTRAPOLATED {pyg_batch * n_batches:7.1f} s "
          f"(= ms/batch x batches)")
    print(f"speed-up: {pyg_batch / ours_batch:.1f}x per training step (interleaved medians, "
          f"= per epoch of steps: {ours_batch * n_batches:.1f} s vs "
          f"{pyg_batch * n_batches:.1f} s); "
          f"{pyg_batch * n_batches / ours_epoch:.1f}x taking our measured epoch (sampling "
          f"included; load-sensitive) against PyG's extrapolated one")

    small = power_law_graph(args.small_events, args.small_events // 10,
                            max(args.small_events // 30, 100), seed=args.seed)
    s_train, s_valid = temporal_split(small)
    print(f"\n== Recall@20 after {args.recall_epochs} epochs, same seed/init/batches ==")
    describe("small graph (train part)", s_train)
    config = TrainConfig(epochs=args.recall_epochs, batch_size=bs, patience=args.recall_epochs,
                         seed=args.seed, progress=False)
    for name, module in zip(("ours", "PyG"), ours_and_pyg(s_train, args.dim, args.layers,
                                                          args.seed), strict=True):
        history = train_bpr(module, s_train, config)
        with torch.no_grad():
            users, items = module()
        recall = recall_at_k(users, items, s_train, s_valid, 20)
        print(f"{name:5s} recall@20 = {recall:.5f}, loss {history.loss[-1]:.5f}, "
              f"{np.mean(history.epoch_seconds):.2f} s/epoch (measured, full epochs)")

    if args.skip_pinsage:
        return
    print("\n== PinSage (defaults: T=10 walks, L=10, top_k=25, batch 512, 500 shared "
          "negatives) ==")
    walker = ItemWalker.from_graph(train)
    items = np.arange(train.num_items)
    start = time.perf_counter()
    walker.neighborhoods(items, num_walks=10, walk_length=10, top_k=25, seed=args.seed)
    took = time.perf_counter() - start
    print(f"neighbourhood sampling: {train.num_items / took:,.0f} nodes/s "
          f"({train.num_items * 100 / took / 1e6:.1f} M walk steps/s incl. counting, "
          f"{took:.2f} s for all {train.num_items:,} items)")
    start = time.perf_counter()
    walker.walk(items, 10, 10, 0.3, np.random.default_rng(0))
    took = time.perf_counter() - start
    print(f"raw walking:            {train.num_items * 100 / took / 1e6:.1f} M steps/s")
    pinsage = PinSage(epochs=1, seed=args.seed, device="cpu", progress=False)
    start = time.perf_counter()
    pool = pinsage._hard_pool(walker, train.num_items)
    print(f"hard-negative pool (band {pinsage.effective_band(train.num_items)}): "
          f"{time.perf_counter() - start:.1f} s for {len(pool):,} items (built once per fit, "
          f"from epoch 2)")
    pairs = len(co_engagement_pairs(train)[0])
    start = time.perf_counter()
    pinsage.fit(train)
    total = time.perf_counter() - start
    print(f"epoch 1: {pinsage.history_.epoch_seconds[0]:.1f} s for {pairs:,} pairs "
          f"({-(-pairs // 512)} batches); fit incl. walks and embedding {total:.1f} s")
    users, items_emb = pinsage.user_embeddings(), pinsage.item_embeddings()
    print(f"PinSage recall@20 after 1 epoch: {recall_at_k(users, items_emb, train, valid):.4f}; "
          f"LightGCN after 1 epoch: "
          f"{recall_at_k(model.user_embeddings(), model.item_embeddings(), train, valid):.4f}")


if __name__ == "__main__":
    main()
