"""The updater's layers: time encoding, masked temporal attention, state updates, module."""

from __future__ import annotations

import math

import pytest
import torch

from models.state_update import STATE_UPDATES, MovingAverageUpdate, make_state_update
from models.temporal_attention import TemporalAttention
from models.time_encoding import TimeEncoding
from models.updater import TemporalUpdater, updater_from_bytes, updater_to_bytes

# tiny tensors: a second intra-op thread only adds contention on a loaded 2-core box
pytestmark = pytest.mark.usefixtures("single_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_time_encoding_shape_init_and_zero_gap() -> None:
    enc = TimeEncoding(10)
    assert enc(torch.zeros(4, 7)).shape == (4, 7, 10)
    expected = 10.0 ** -torch.linspace(0, 9, 10, dtype=torch.float64)
    torch.testing.assert_close(enc.w.double(), expected, rtol=1e-6, atol=0)
    with torch.no_grad():
        enc.phi.uniform_(-3, 3, generator=gen())
    torch.testing.assert_close(enc(torch.zeros(3)), torch.cos(enc.phi).expand(3, -1))


def test_time_encoding_is_finite_for_large_gaps_and_trainable() -> None:
    enc = TimeEncoding(6)
    dt = torch.tensor([1.0, 3600.0, 86400.0 * 365 * 30], dtype=torch.float64)
    out = enc(dt)
    assert torch.isfinite(out).all() and out.dtype == torch.float32
    out.sum().backward()
    assert enc.w.grad is not None and enc.phi.grad is not None
    # The slowest frequency barely moves within a day: recent gaps encode alike there.
    assert abs(float(out[0, -1] - out[1, -1])) < 1e-5


def attention_inputs(b: int = 4, n: int = 6, d: int = 8, seed: int = 0):
    g = gen(seed)
    state, nbr = torch.randn(b, d, generator=g), torch.randn(b, n, d, generator=g)
    dt = torch.rand(b, n, generator=g, dtype=torch.float64) * 1e5
    weight = torch.rand(b, n, generator=g) + 0.5
    mask = torch.rand(b, n, generator=g) < 0.6
    mask[:, 0] = True
    return state, nbr, dt, weight, mask


def trained_like(layer: TemporalAttention, seed: int = 1) -> TemporalAttention:
    """Random weights everywhere (incl. the merge's zero-initialised last layer)."""
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen(seed)) * 0.3)
    return layer


@pytest.mark.parametrize("poison", [0.0, 1e6, float("inf"), float("nan")])
def test_attention_ignores_padded_neighbours(poison: float) -> None:
    layer = trained_like(TemporalAttention(8, time_dim=4, num_heads=2, key_dim=8))
    state, nbr, dt, weight, mask = attention_inputs()
    before = layer(state, nbr, dt, weight, mask)
    pad = ~mask
    nbr2, dt2, w2 = nbr.clone(), dt.clone(), weight.clone()
    nbr2[pad], dt2[pad], w2[pad] = poison, 7.0, 3.0
    torch.testing.assert_close(layer(state, nbr2, dt2, w2, mask), before)
    # ...while a real neighbour's value does change it
    nbr2[:, 0] += 1.0
    assert not torch.allclose(layer(state, nbr2, dt2, w2, mask), before)


def test_attention_is_permutation_invariant_and_handles_empty_rows() -> None:
    layer = trained_like(TemporalAttention(8, time_dim=4))
    state, nbr, dt, weight, mask = attention_inputs()
    perm = torch.randperm(nbr.shape[1], generator=gen(2))
    torch.testing.assert_close(layer(state, nbr[:, perm], dt[:, perm], weight[:, perm],
                                     mask[:, perm]), layer(state, nbr, dt, weight, mask))
    mask[1] = False
    out = layer(state, nbr, dt, weight, mask)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="nbr_state"):
        layer(state, nbr[:, :, :5], dt, weight, mask)


def test_untrained_attention_returns_a_convex_mix_of_neighbours() -> None:
    layer = TemporalAttention(8, time_dim=4)
    state, nbr, dt, weight, mask = attention_inputs()
    out = layer(state, nbr, dt, weight, mask)
    masked = nbr.masked_fill(~mask.unsqueeze(-1), float("nan"))
    lo, hi = masked.nan_to_num(float("inf")).amin(1), masked.nan_to_num(-float("inf")).amax(1)
    assert ((out >= lo - 1e-5) & (out <= hi + 1e-5)).all()


@pytest.mark.parametrize("history_weight", [1.0, 4.0])
def test_moving_average_formula_is_exact(history_weight: float) -> None:
    g = gen(3)
    prev, fresh = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    deg_old = torch.tensor([0, 1, 3, 10, 7])
    deg_new = torch.tensor([2, 1, 1, 5, 7])
    out = MovingAverageUpdate(4, history_weight)(prev, fresh, deg_old, deg_new)
    for r in range(5):
        old = history_weight * deg_old[r].item()
        keep = old / (old + deg_new[r].item())
        torch.testing.assert_close(out[r], keep * prev[r] + (1 - keep) * fresh[r])
    torch.testing.assert_close(out[0], fresh[0])  # no history: the fresh embedding as is


@pytest.mark.parametrize("history_weight", [1.0, 4.0])
def test_trainable_updates_start_as_the_moving_average(history_weight: float) -> None:
    g = gen(4)
    prev, fresh = 0.05 * torch.randn(6, 8, generator=g), 0.05 * torch.randn(6, 8, generator=g)
    deg_old, deg_new = torch.tensor([0, 1, 5, 50, 2, 9]), torch.tensor([1, 1, 2, 1, 6, 3])
    average = MovingAverageUpdate(8, history_weight)(prev, fresh, deg_old, deg_new)
    mlp = make_state_update("mlp", 8, history_weight)(prev, fresh, deg_old, deg_new)
    torch.testing.assert_close(mlp, average)
    # the GRU's candidate is tanh(fresh), close to fresh for small states
    gru = make_state_update("gru", 8, history_weight)(prev, fresh, deg_old, deg_new)
    torch.testing.assert_close(gru, average, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="history_weight"):
        make_state_update("gru", 8, 0.0)


@pytest.mark.parametrize("kind", STATE_UPDATES)
def test_state_updates_shapes_and_gradients(kind: str) -> None:
    upd = make_state_update(kind, 6)
    prev = torch.randn(3, 6, generator=gen(), requires_grad=True)
    fresh = torch.randn(3, 6, generator=gen(1), requires_grad=True)
    out = upd(prev, fresh, torch.tensor([1, 2, 0]), torch.ones(3, dtype=torch.long))
    assert out.shape == (3, 6)
    out.sum().backward()
    assert fresh.grad is not None and fresh.grad.abs().sum() > 0
    assert repr(upd) == f"{type(upd).__name__}(embedding_dim=6, history_weight=1.0)"
    with pytest.raises(ValueError, match="unknown state update"):
        make_state_update("lstm", 6)


def test_updater_bytes_round_trip_and_arguments() -> None:
    m = TemporalUpdater(8, num_layers=2, time_dim=4, update="mlp", item_feature_dim=3)
    trained_like(m.attention[0]["user"])
    back = updater_from_bytes(updater_to_bytes(m))
    assert repr(back) == repr(m)
    for (k, a), (_, b) in zip(m.state_dict().items(), back.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    feats = torch.randn(2, 3, generator=gen())
    init = m.initial_state("item", 2, feats, torch.tensor([True, False]))
    torch.testing.assert_close(init[1], m.new_item.detach())
    assert not torch.allclose(init[0], m.new_item.detach())
    with pytest.raises(ValueError, match="num_layers"):
        TemporalUpdater(8, num_layers=3)
    with pytest.raises(ValueError, match="item_feature_dim=0"):
        TemporalUpdater(8).initial_state("item", 2, feats)
    with pytest.raises(ValueError, match="not a TemporalUpdater"):
        TemporalUpdater.from_bytes(_saved({"x": 1}))


def _saved(obj: object) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_initial_weights_come_from_the_seed_only() -> None:
    torch.manual_seed(123)
    a = TemporalUpdater(8, seed=3)
    state = torch.get_rng_state()
    b = TemporalUpdater(8, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))
    c = TemporalUpdater(8, seed=4)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                      c.state_dict().values(), strict=True))


def test_new_node_vectors_start_at_zero_and_time_encoding_spans_decades() -> None:
    m = TemporalUpdater(4, time_dim=5)
    assert m.initial_state("user", 2).abs().sum() == 0
    w = m.attention[0]["user"].time_encoding.w
    assert math.isclose(float(w[0]), 1.0) and math.isclose(float(w[-1]), 1e-9, rel_tol=1e-5)


def test_item_degree_growth_scales_updated_items_only() -> None:
    plain = TemporalUpdater(6, time_dim=4, item_degree_exponent=0.0)
    grown = TemporalUpdater(6, time_dim=4, item_degree_exponent=1.0)
    grown.load_state_dict(plain.state_dict())  # the same weights; only the exponent differs
    b, n = 3, 5
    gen = torch.Generator().manual_seed(0)
    args = (torch.randn(b, 6, generator=gen), torch.randn(b, n, 6, generator=gen),
            torch.rand(b, n, generator=gen) * 100, torch.ones(b, n),
            torch.ones(b, n, dtype=torch.bool))
    deg_old, deg_new = torch.tensor([4, 0, 1]), torch.tensor([4, 3, 1])
    for side, expected in (("item", [2.0, 1.0, 2.0]), ("user", [1.0, 1.0, 1.0])):
        base = plain.step(0, side, *args, deg_old, deg_new)
        out = grown.step(0, side, *args, deg_old, deg_new)
        torch.testing.assert_close(out, base * torch.tensor(expected).unsqueeze(-1))
    assert TemporalUpdater.from_bytes(grown.to_bytes()).item_degree_exponent == 1.0
    with pytest.raises(ValueError, match="item_degree_exponent"):
        TemporalUpdater(6, item_degree_exponent=-1.0)
