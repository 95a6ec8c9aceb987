"""Data-parallel BPR training: two gloo processes give one process's embeddings."""

import numpy as np
import pytest
import torch

from models import MFBPR, LightGCN
from models.base import InteractionGraph
from models.data_parallel import DataParallel
from streamrec.parallel_fit import fit_data_parallel


def _graph(seed: int = 0, n: int = 900) -> InteractionGraph:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 50, n)
    items = (users % 3) * 10 + rng.integers(0, 10, n)
    return InteractionGraph.from_arrays(users, items, np.arange(n, dtype=float),
                                        num_users=50, num_items=30)


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_shares_partition_every_batch(world_size: int) -> None:
    for n in (1, 5, 64, 2048):
        shares = [DataParallel(r, world_size).share(n) for r in range(world_size)]
        rows = np.concatenate([np.arange(n)[s] for s in shares])
        assert rows.tolist() == list(range(n))


def test_bad_rank_fails_fast() -> None:
    with pytest.raises(ValueError, match="rank"):
        DataParallel(2, 2)
    with pytest.raises(RuntimeError, match="not initialised"):
        DataParallel.from_process_group()


def test_two_processes_equal_one() -> None:
    cls = LightGCN
    g = _graph()
    # batch 100 over 900 edges: the last batch is odd-sized, so shares differ by a row
    kwargs = dict(embedding_dim=8, epochs=3, batch_size=101, lr=0.01, progress=False,
                  device="cpu", seed=5)
    valid = InteractionGraph.from_arrays(*(a[:60] for a in (_graph(1).user, _graph(1).item)),
                                         num_users=50, num_items=30)
    one = cls(**kwargs).fit(g, valid)
    two = fit_data_parallel(cls(**kwargs), g, valid, processes=2, threads=1)
    torch.testing.assert_close(two.user_embeddings(), one.user_embeddings(), atol=1e-5, rtol=0)
    torch.testing.assert_close(two.item_embeddings(), one.item_embeddings(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(two.history_.loss, one.history_.loss, rtol=1e-5)
    assert two.history_.best_epoch == one.history_.best_epoch
    assert [e for e, _ in two.history_.valid] == [e for e, _ in one.history_.valid]
    # training moved the weights away from the initialisation
    init = cls(**kwargs).build_module(g, torch.Generator().manual_seed(5), torch.device("cpu"))
    with torch.no_grad():
        assert not torch.allclose(two.user_embeddings(), init()[0], atol=1e-3)


def test_one_process_shares_the_whole_batch() -> None:
    g = _graph()
    kwargs = dict(embedding_dim=4, epochs=2, batch_size=64, progress=False, device="cpu")
    torch.testing.assert_close(MFBPR(**kwargs).fit(g, parallel=DataParallel(0, 1))
                               .item_embeddings(), MFBPR(**kwargs).fit(g).item_embeddings(),
                               atol=0, rtol=0)
