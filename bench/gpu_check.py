"""GPU check: every CUDA path of streamrec against its CPU result, on small data (< 3 min).

    python bench/gpu_check.py [--seed 0]

Runs, once on the CPU and once on CUDA, with the same seed and data:

* LightGCN and PinSage training (a few epochs: their per-epoch BPR / margin losses and the
  fitted embeddings, compared by relative difference and cosine);
* the incremental updater (:class:`models.IncrementalUpdater`: the same event batches, the
  vectors it returns);
* live-update training (:func:`models.train_live_update`: the trained updater's weights);
* FAISS search (:class:`store.ann.ItemIndex` with ``use_gpu=True`` against the exact numpy
  answer), including k = 3000 with exclusions, beyond FAISS-GPU's k <= 2048.

Prints one line per check (``ok`` / ``MISMATCH`` with the figures, seconds on each device) and
exits 1 on a mismatch. Without CUDA it says so, runs the CPU side (so the script itself is
tested anywhere) and exits 0; without FAISS GPU support (faiss-cpu) that check says so.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from models import (  # noqa: E402
    IncrementalUpdater,
    InteractionGraph,
    LightGCN,
    NeighbourBuffer,
    PinSage,
    TemporalUpdater,
    train_live_update,
)
from store.ann import ItemIndex  # noqa: E402
from stream.synthetic import generate  # noqa: E402

Result = dict[str, np.ndarray]


def small_graph(seed: int) -> InteractionGraph:
    """A few thousand synthetic events, dense enough to train on in seconds."""
    s = generate(n_events=6000, seed=seed, days=10.0, n_users=300, n_items=400)
    return InteractionGraph.from_arrays(s.user, s.item, s.ts, num_users=int(s.user.max()) + 1,
                                        num_items=int(s.item.max()) + 1)


def lightgcn(graph: InteractionGraph, device: str, seed: int) -> Result:
    model = LightGCN(embedding_dim=32, epochs=3, batch_size=1024, seed=seed, device=device,
                     progress=False).fit(graph)
    return {"loss": np.array(model.history_.loss), "user": model.user_embeddings().numpy(),
            "item": model.item_embeddings().numpy()}


def pinsage(graph: InteractionGraph, device: str, seed: int) -> Result:
    model = PinSage(embedding_dim=32, epochs=2, batch_size=256, num_negatives=64,
                    hard_negative_band=(20, 60), num_workers=0, seed=seed, device=device,
                    progress=False).fit(graph)
    return {"loss": np.array(model.history_.loss), "user": model.user_embeddings().numpy(),
            "item": model.item_embeddings().numpy()}


def _base(graph: InteractionGraph, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    counts = np.zeros((graph.num_users, graph.num_items))
    np.add.at(counts, (graph.user, graph.item), 1.0)
    u, s, vt = np.linalg.svd(counts, full_matrices=False)
    root = np.sqrt(s[:dim])
    return (torch.from_numpy(u[:, :dim] * root).float(),
            torch.from_numpy(vt[:dim].T * root).float())


def updater(graph: InteractionGraph, device: str, seed: int) -> Result:
    half = graph.subset(np.arange(graph.num_edges) < graph.num_edges // 2)
    user, item = _base(half)
    inc = IncrementalUpdater(user, item, TemporalUpdater(16, time_dim=8, key_dim=16, seed=seed),
                             NeighbourBuffer.from_graph(half, 10), device=device)
    out: list[np.ndarray] = []
    rest = np.arange(graph.num_edges // 2, graph.num_edges)
    for batch in np.array_split(rest, 10):
        res = inc.update(graph.user[batch], graph.item[batch], graph.ts[batch])
        out += [res.user_vectors, res.item_vectors]
    res = inc.update([inc.num_users + 7], [0], [float(graph.ts.max()) + 1])  # a new user
    out.append(res.user_vectors)
    return {"vectors": np.concatenate([v.ravel() for v in out])}


def live_update(graph: InteractionGraph, device: str, seed: int) -> Result:
    module = train_live_update(graph, _base(graph), holdout=0.2, num_batches=10,
                               valid_batches=2, epochs=2, seed=seed, device=device,
                               progress=False, time_dim=8, key_dim=16)
    return {name: p.detach().cpu().numpy() for name, p in module.state_dict().items()
            if p.is_floating_point()}


def faiss_search(seed: int, use_gpu: bool) -> Result:
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((20_000, 32)).astype(np.float32)
    queries = rng.standard_normal((16, 32)).astype(np.float32)
    exclude = [rng.choice(len(items), 300, replace=False) for _ in queries]
    index = ItemIndex(items, use_gpu=use_gpu) if use_gpu else ItemIndex(items, backend="numpy")
    out: Result = {"kind": np.array([index.kind == "flat-gpu"])}
    for k in (10, 100, 3000):
        scores, ids = index.search(queries, k, exclude=exclude)
        out[f"ids@{k}"], out[f"scores@{k}"] = ids, scores
    return out


def compare(cpu: Result, gpu: Result, rtol: float, min_cos: float) -> tuple[bool, str]:
    """Relative max difference per array (<= rtol) and, for 2-d ones, the mean row cosine
    (>= min_cos); ids are compared by overlap."""
    worst, notes = 0.0, []
    for name, a in cpu.items():
        b = gpu[name]
        if name.startswith("ids"):
            overlap = np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b, strict=True)])
            notes.append(f"{name} overlap {overlap:.4f}")
            if overlap < 0.999:
                return False, "; ".join(notes)
            continue
        if a.dtype == bool:
            continue
        diff = float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12)) if a.size else 0.0
        worst = max(worst, diff)
        if a.ndim == 2 and a.shape[0] > 1:
            cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
                                      + 1e-12)
            notes.append(f"{name} cos {float(cos.mean()):.5f}")
            if cos.mean() < min_cos:
                return False, "; ".join(notes)
    notes.insert(0, f"max rel diff {worst:.2e}")
    return worst <= rtol, "; ".join(notes)


def run(name: str, fn: Callable[[str], Result], cuda: bool, rtol: float, min_cos: float
        ) -> bool:
    started = time.perf_counter()
    cpu = fn("cpu")
    cpu_s = time.perf_counter() - started
    if not cuda:
        print(f"{name:<12} cpu only ({cpu_s:.1f}s): {len(cpu)} arrays, "
              f"{sum(a.size for a in cpu.values()):,} values")
        return True
    started = time.perf_counter()
    try:
        gpu = fn("cuda")
    except Exception as exc:  # a failing CUDA path is what this script is for: report it
        print(f"{name:<12} FAILED on cuda: {type(exc).__name__}: {exc}")
        return False
    gpu_s = time.perf_counter() - started
    ok, notes = compare(cpu, gpu, rtol, min_cos)
    print(f"{name:<12} {'ok' if ok else 'MISMATCH'} (cpu {cpu_s:.1f}s, cuda {gpu_s:.1f}s): "
          f"{notes}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    cuda = torch.cuda.is_available()
    if cuda:
        print(f"CUDA: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    else:
        print(f"CUDA is not available (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda}): running the CPU side only, no CPU-CUDA comparison")
    graph, seed = small_graph(args.seed), args.seed
    checks: list[tuple[str, Callable[[str], Result], float, float]] = [
        ("lightgcn", lambda d: lightgcn(graph, d, seed), 1e-2, 0.999),
        ("pinsage", lambda d: pinsage(graph, d, seed), 5e-2, 0.99),
        ("updater", lambda d: updater(graph, d, seed), 1e-4, 0.9999),
        ("live-update", lambda d: live_update(graph, d, seed), 1e-2, 0.999),
    ]
    ok = all([run(name, fn, cuda, rtol, cos) for name, fn, rtol, cos in checks])
    if not cuda:  # exercise the comparison itself: the CPU updater is deterministic
        same, notes = compare(updater(graph, "cpu", seed), updater(graph, "cpu", seed),
                              0.0, 1.0 - 1e-6)
        print(f"{'updater':<12} cpu vs cpu (determinism): {'ok' if same else 'MISMATCH'}: "
              f"{notes}")
        ok &= same
    ok &= run_faiss(seed, cuda)
    print("all checks passed" if ok else "some checks FAILED")
    return 0 if ok else 1


def run_faiss(seed: int, cuda: bool) -> bool:
    try:
        import faiss
    except ImportError:
        print("faiss        not installed: skipped")
        return True
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if not cuda or gpus < 1:
        started = time.perf_counter()
        faiss_search(seed, use_gpu=False)
        print(f"faiss        no GPU build or device (faiss {faiss.__version__}, "
              f"{gpus} GPUs; install faiss-gpu): exact CPU side ran "
              f"({time.perf_counter() - started:.1f}s)")
        return True
    return run("faiss-gpu", lambda d: faiss_search(seed, use_gpu=d == "cuda"), True,
               1e-4, 0.9999)


if __name__ == "__main__":
    raise SystemExit(main())
