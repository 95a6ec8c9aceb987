"""PinSage parts: pairs, blocks, the convolve layer, prefetching, features, curriculum."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from models.base import InteractionGraph
from models.negatives import UniformNegativeSampler
from models.pinsage import PinSage
from models.pinsage_layers import PinSageConv, PinSageEncoder, recency_pooled_users
from models.pinsage_sampler import PinSageBatchMaker, build_block, co_engagement_pairs
from models.prefetch import BackgroundBatches
from models.random_walks import ItemWalker
from tests.models.conftest import Planted


def test_pairs_are_consecutive_distinct_items_per_user() -> None:
    g = InteractionGraph.from_arrays([1, 0, 0, 0, 1, 0], [7, 1, 2, 2, 8, 3],
                                     [0.0, 4.0, 1.0, 2.0, 5.0, 3.0])
    q, p = co_engagement_pairs(g)  # user 0 in time: 2, 2, 3, 1; user 1: 7, 8
    assert sorted(zip(q.tolist(), p.tolist(), strict=True)) == [(2, 3), (3, 1), (7, 8)]


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_block_forward_equals_full_graph_forward(planted: Planted, num_layers: int) -> None:
    g = planted.train
    nbrs, w = ItemWalker.from_graph(g).neighborhoods(np.arange(g.num_items), top_k=5)
    enc = PinSageEncoder(g.num_items, embedding_dim=8, num_layers=num_layers)
    enc.reset_parameters(torch.Generator().manual_seed(0))
    targets = np.array([3, 17, 3, 25, 0])
    block, rows = build_block(targets, nbrs, w, num_layers)
    with torch.no_grad():
        part = enc(block)[torch.from_numpy(rows)]
        full = enc.full(torch.from_numpy(nbrs), torch.from_numpy(w))[torch.from_numpy(targets)]
    torch.testing.assert_close(part, full)


def test_sparse_pooling_path_matches_embedding_bag_with_gradients(planted: Planted) -> None:
    g = planted.train
    nbrs, w = ItemWalker.from_graph(g).neighborhoods(np.arange(g.num_items), top_k=4)
    block, _ = build_block(np.array([1, 5, 30, 33]), nbrs, w, num_layers=1)
    layer = block.layers[0]
    conv = PinSageConv(6, 5)
    h = torch.randn(len(block.input_ids), 6, generator=torch.Generator().manual_seed(0))
    grads = []
    for adj in ((layer.adj, layer.adj_t), None):
        x = h.clone().requires_grad_(True)
        out = conv(x, layer.self_idx, layer.nbr_idx, layer.nbr_w, adj)
        (out * torch.arange(5.0)).sum().backward()
        grads.append((out.detach(), x.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_conv_is_importance_pooling() -> None:
    conv = PinSageConv(3, 4, hidden_dim=5)
    conv.reset_parameters(torch.Generator().manual_seed(0))
    h = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    nbr, w = torch.tensor([[1, 2, 3]]), torch.tensor([[0.5, 0.3, 0.2]])
    out = conv(h, torch.tensor([0]), nbr, w)
    msgs = torch.relu(conv.neighbor(h[1:]))
    pooled = (w[0, :, None] * msgs).sum(0)
    z = torch.relu(conv.combine(torch.cat([h[0], pooled])))
    torch.testing.assert_close(out[0], z / z.norm())
    assert out.norm().item() == pytest.approx(1.0)
    assert repr(conv) == "PinSageConv(in_dim=3, out_dim=4, hidden_dim=5)"


def test_background_batches_keep_order_and_overlap() -> None:
    running: set[str] = set()

    def make(i: int) -> int:
        running.add(threading.current_thread().name)
        time.sleep(0.002 * ((i * 7) % 5))  # uneven work, so workers finish out of order
        return i

    with BackgroundBatches(make, num_batches=40, num_workers=3, queue_size=2) as batches:
        assert list(batches) == list(range(40))
    assert len(running) == 3 and all(n.startswith("batch-producer") for n in running)


def test_background_batches_reraise_and_stop_early() -> None:
    def make(i: int) -> int:
        if i == 5:
            raise KeyError("boom")
        return i

    with pytest.raises(RuntimeError, match="building batch 5 failed"), \
            BackgroundBatches(make, num_batches=10, num_workers=2) as batches:
        list(batches)
    with BackgroundBatches(lambda i: i, num_batches=1000, num_workers=2, queue_size=1) as b:
        for i in b:
            if i == 3:
                break
    assert not any(t.name.startswith("batch-producer") for t in threading.enumerate())


def test_batches_are_independent_of_threading(planted: Planted) -> None:
    kwargs = dict(embedding_dim=8, epochs=3, batch_size=32, num_negatives=8, progress=False,
                  device="cpu")
    inline = PinSage(num_workers=0, **kwargs).fit(planted.train)
    threaded = PinSage(num_workers=3, queue_size=1, **kwargs).fit(planted.train)
    assert torch.equal(inline.item_embeddings(), threaded.item_embeddings())


def test_curriculum_adds_hard_negatives(planted: Planted) -> None:
    g = planted.train
    model = PinSage(epochs=3, top_k=5, progress=False)
    assert model.effective_band(100_000) == (2000, 5000)
    assert model.effective_band(1_000) == (20, 50)
    assert model.effective_band(g.num_items) == (1, 2)
    walker = ItemWalker.from_graph(g)
    pool = model._hard_pool(walker, g.num_items)
    assert pool.shape == (g.num_items, 16)
    comm = planted.item_community
    assert (comm[pool] == comm[:, None]).mean() > 0.9  # related items: same community
    nbrs, w = walker.neighborhoods(np.arange(g.num_items), top_k=5)
    q, p = co_engagement_pairs(g)
    maker = PinSageBatchMaker(q, p, nbrs, w, 2, 16, UniformNegativeSampler(g.num_items),
                              num_negatives=7, hard_pool=pool, num_hard=2, seed=0, epoch=3)
    batch = maker(1)
    targets = batch.block.targets
    assert batch.hard_negative.shape == (16, 2) and batch.negative.shape == (7,)
    assert torch.equal(targets[batch.query], torch.from_numpy(q[16:32]))
    assert torch.equal(targets[batch.positive], torch.from_numpy(p[16:32]))
    hard = targets[batch.hard_negative].numpy()
    assert all(set(hard[j]) <= set(pool[q[16 + j]]) for j in range(16))
    again = maker(1)
    assert torch.equal(batch.negative, again.negative)
    fitted = model.fit(g)
    assert "hard_negative_pool" in fitted.timings_ and len(fitted.history_.loss) == 3


def test_item_features_embed_brand_new_items(planted: Planted) -> None:
    g = planted.train
    rng = np.random.default_rng(0)
    comm = planted.item_community
    feats = torch.from_numpy(np.eye(2)[comm] + 0.1 * rng.standard_normal((g.num_items, 2)))
    model = PinSage(embedding_dim=8, epochs=3, batch_size=32, num_negatives=16, lr=0.01,
                    item_features=feats, progress=False, device="cpu").fit(g)
    new = model.embed_new_items(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert new.shape == (2, 8) and torch.isfinite(new).all()
    assert model.hyper_parameters()["item_features"] == [g.num_items, 2]
    with pytest.raises(ValueError, match="learns id embeddings"):
        PinSage(epochs=1, num_negatives=4, progress=False).fit(g).embed_new_items(new[:, :2])
    with pytest.raises(ValueError, match="item_features has"):
        PinSage(item_features=feats[:3], progress=False).fit(g)


def test_user_embedding_favours_recent_items() -> None:
    emb = torch.eye(4)
    user = np.array([0, 0, 0, 1])
    item = np.array([0, 1, 2, 3])
    ts = np.array([0.0, 50.0, 100.0, 7.0])
    out = recency_pooled_users(user, item, ts, np.ones(4, np.float32), emb, num_users=3,
                               history=2, half_life_seconds=50.0)
    assert out[0, 2] > out[0, 1] > 0 and out[0, 0] == 0  # newest first; beyond history dropped
    assert out[1].tolist() == [0, 0, 0, 1] and out[2].abs().sum() == 0


def test_needs_positive_pairs() -> None:
    g = InteractionGraph.from_arrays([0, 1], [0, 1])
    with pytest.raises(ValueError, match="no user engaged with two distinct items"):
        PinSage(progress=False).fit(g)
