"""Every ranking metric against hand-computed values, and the PyG cross-check."""

import math

import numpy as np
import pytest
import torch
from torch_geometric.metrics import LinkPredRecall

from evaluation.metrics import RankingAccumulator, ranking_metrics, relevance

# user 0: positives {1, 3, 7}, list [3, 5, 1, 9, 2] -> hits at ranks 1 and 3
# user 1: positives {4},       list [0, 1, 2, 4, 5] -> hit at rank 4
TOP = torch.tensor([[3, 5, 1, 9, 2], [0, 1, 2, 4, 5]])
POS = torch.tensor([[0, 0, 0, 1], [1, 3, 7, 4]])
L2, L3, L4, L5 = (math.log2(x) for x in (2, 3, 4, 5))


def test_hand_computed_values_at_two_cut_offs():
    m = {k: v.tolist() for k, v in ranking_metrics(TOP, POS, ks=(2, 5)).items()}
    expected = {
        "recall@2": [1 / 2, 0.0],            # |P ∩ R| / min(|P|, K) = 1 / min(3, 2)
        "precision@2": [1 / 2, 0.0],
        "hit@2": [1.0, 0.0],
        "mrr@2": [1.0, 0.0],
        "ndcg@2": [(1 / L2) / (1 / L2 + 1 / L3), 0.0],
        "recall@5": [2 / 3, 1.0],
        "precision@5": [2 / 5, 1 / 5],
        "hit@5": [1.0, 1.0],
        "mrr@5": [1.0, 1 / 4],
        "ndcg@5": [(1 / L2 + 1 / L4) / (1 / L2 + 1 / L3 + 1 / L4), (1 / L5) / (1 / L2)],
    }
    assert m.keys() == expected.keys()
    for key, values in expected.items():
        assert m[key] == pytest.approx(values), key


def test_recall_is_capped_at_k_unlike_pyg():
    top = torch.arange(10).view(1, -1)
    pos = torch.stack([torch.zeros(30, dtype=torch.long), torch.arange(30)])
    assert ranking_metrics(top, pos, ks=(10,))["recall@10"].item() == 1.0
    pyg = LinkPredRecall(10)
    pyg.update(top, pos)
    assert pyg.compute().item() == pytest.approx(1 / 3)  # |P ∩ R| / |P|: why we compute it


def test_duplicate_positives_count_once_and_no_positives_is_nan():
    top = torch.tensor([[0, 1], [2, 3]])
    pos = torch.tensor([[0, 0, 0], [1, 1, 5]])
    m = ranking_metrics(top, pos, ks=(2,))
    assert m["recall@2"][0].item() == pytest.approx(1 / 2)
    assert all(math.isnan(v[1].item()) for v in m.values())


def test_relevance_and_input_checks():
    assert relevance(TOP, POS).tolist() == [[True, False, True, False, False],
                                            [False, False, False, True, False]]
    with pytest.raises(ValueError, match="repeats an item"):
        ranking_metrics(torch.tensor([[1, 1]]), torch.tensor([[0], [1]]), ks=(2,))
    with pytest.raises(ValueError, match="exceeds"):
        ranking_metrics(TOP, POS, ks=(6,))
    with pytest.raises(ValueError, match="rows fall outside"):
        ranking_metrics(TOP, torch.tensor([[2], [1]]), ks=(1,))
    with pytest.raises(ValueError, match="int64"):
        ranking_metrics(TOP.float(), POS, ks=(1,))


def test_accumulator_means_coverage_and_popularity():
    pop = torch.tensor([10.0, 20, 30, 0, 0, 0, 0, 0, 0, 0])
    acc = RankingAccumulator(ks=(2, 5), num_items=10, popularity=pop)
    acc.update(TOP[:1], POS[:, :3])       # two batches, as the protocol sends them
    acc.update(TOP[1:], torch.tensor([[0], [4]]))
    out = acc.compute()
    assert out["recall@5"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["mrr@5"] == pytest.approx((1 + 1 / 4) / 2)
    assert out["hit@2"] == pytest.approx(1 / 2)
    assert out["coverage@2"] == pytest.approx(4 / 10)  # {3, 5, 0, 1}
    assert out["coverage@5"] == pytest.approx(7 / 10)  # {0, 1, 2, 3, 4, 5, 9}
    assert out["popularity@2"] == pytest.approx(((0 + 0) / 2 + (10 + 20) / 2) / 2)
    per_user = acc.per_user()
    assert per_user["ndcg@5"].shape == (2,)
    assert np.mean(per_user["ndcg@5"]) == pytest.approx(out["ndcg@5"])


def test_accumulator_refuses_users_without_positives_and_empty_runs():
    acc = RankingAccumulator(ks=(1,))
    with pytest.raises(ValueError, match="no users were evaluated"):
        acc.compute()
    with pytest.raises(ValueError, match="at least one positive"):
        acc.update(torch.tensor([[0], [1]]), torch.tensor([[0], [0]]))
