"""The offline protocol on a hand-built stream with known answers."""

import math

import numpy as np
import pytest
import torch

from evaluation.protocol import EvaluationTask, evaluate_model
from evaluation.split import temporal_split
from models.base import InteractionGraph, Recommender

# train (ts < 10): u0 {0, 1}, u1 {0, 2}, u2 {0}           popularity: item0 3, item1 1, item2 1
# valid:           u0 {3}
# test (ts >= 20): u0 {1 (seen), 4}, u1 {5 (new item)}, u2 {0 (seen)}, u3 {2} (cold user)
EVENTS = [(0, 0, 1), (0, 1, 2), (1, 0, 3), (1, 2, 4), (2, 0, 5), (0, 3, 15),
          (0, 1, 21), (0, 4, 22), (1, 5, 23), (2, 0, 24), (3, 2, 25)]
N_USERS, N_ITEMS = 4, 6


@pytest.fixture
def split():
    u, i, t = zip(*EVENTS, strict=True)
    graph = InteractionGraph.from_arrays(u, i, t, num_users=N_USERS, num_items=N_ITEMS)
    return temporal_split(graph, t1=10, t2=20)


class Table(Recommender):
    """Scores from a fixed ``[U, I]`` table (identity item embeddings)."""

    def __init__(self, table):
        self.table = torch.as_tensor(table, dtype=torch.float32)

    def fit(self, graph, valid=None):
        return self

    def user_embeddings(self):
        return self.table

    def item_embeddings(self):
        return torch.eye(self.table.size(1))


def oracle(graph: InteractionGraph, extra: dict | None = None) -> Table:
    """Knows the test items; ``extra`` maps (user, item) to a score that overrides."""
    table = torch.zeros(N_USERS, N_ITEMS)
    table[torch.from_numpy(graph.user), torch.from_numpy(graph.item)] = 5.0
    for (u, i), s in (extra or {}).items():
        table[u, i] = s
    return Table(table)


def test_task_positives_masks_and_slices(split):
    task = EvaluationTask.from_split(split)
    assert task.users.tolist() == [0, 1, 3]  # u2's only test item was already seen
    assert task.dropped_users == 1
    assert task.positives(0, 3).tolist() == [[0, 1, 2], [4, 5, 2]]
    assert task.cold.tolist() == [False, False, True]
    assert task.known_items.tolist() == [True, True, True, False, False, False]
    assert task.head_items.tolist() == [True, False, False, False, False, False]
    assert task.bucket_labels == ["cold (0)", "2"]
    assert task.bucket.tolist() == [1, 1, 0]


def test_oracle_scores_perfectly_on_warm_users_and_cold_users_get_popularity(split):
    ev = evaluate_model(oracle(split.test), EvaluationTask.from_split(split), ks=(1, 3),
                        n_bootstrap=50)
    m = ev.metrics
    # u0 and u1 hit at rank 1; cold u3 is ranked by popularity [0, 1, 2, ...]: item 2 is 3rd
    assert m["recall@1"] == pytest.approx(2 / 3)
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["mrr@3"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert m["precision@3"] == pytest.approx(1 / 3)
    assert m["recall_known@1"] == 0.0 and m["recall_known@3"] == 1.0  # only u3's item 2 known
    assert m["coverage@1"] == pytest.approx(3 / N_ITEMS)  # items 4, 5, 0
    users = ev.slices["users"]
    assert users["warm"]["n_users"] == 2 and users["warm"]["recall@1"] == 1.0
    assert users["cold"]["n_users"] == 1 and users["cold"]["recall@1"] == 0.0
    assert ev.slices["activity"]["2"]["recall@1"] == 1.0
    items = ev.slices["items"]
    assert items["head"]["n_users"] == 0 and math.isnan(items["head"]["recall@1"])
    assert items["tail"]["n_users"] == 3 and items["tail"]["recall@3"] == 1.0
    lo, hi = ev.ci["recall@1"]
    assert 0.0 <= lo <= m["recall@1"] <= hi <= 1.0
    assert ev.as_dict()["recall@1_ci"] == [lo, hi]


def test_seen_items_are_masked_even_when_scored_highest(split):
    # the model loves what users already consumed; masking must hide it
    loves_seen = oracle(split.test, {(0, 0): 9.0, (0, 1): 9.0, (1, 0): 9.0, (1, 2): 9.0})
    m = evaluate_model(loves_seen, EvaluationTask.from_split(split), ks=(1,),
                       n_bootstrap=10).metrics
    assert m["recall@1"] == pytest.approx(2 / 3)


def test_validation_items_are_masked_only_when_trained_on(split):
    model = oracle(split.test, {(0, 3): 9.0})  # u0's validation item scored highest
    m_train = evaluate_model(model, EvaluationTask.from_split(split, fit_on="train"),
                             ks=(1,), n_bootstrap=10).metrics
    m_both = evaluate_model(model, EvaluationTask.from_split(split, fit_on="train+valid"),
                            ks=(1,), n_bootstrap=10).metrics
    assert m_train["recall@1"] == pytest.approx(1 / 3)  # u0 gets item 3, a miss
    assert m_both["recall@1"] == pytest.approx(2 / 3)


def test_batching_does_not_change_results(split):
    task = EvaluationTask.from_split(split)
    a = evaluate_model(oracle(split.test), task, ks=(1, 3), batch_size=1, n_bootstrap=20)
    b = evaluate_model(oracle(split.test), task, ks=(1, 3), batch_size=100, n_bootstrap=20)
    assert a.metrics == b.metrics and a.ci == b.ci


def test_bad_models_and_cut_offs_fail_fast(split):
    task = EvaluationTask.from_split(split)
    with pytest.raises(ValueError, match="exceeds the catalogue"):
        evaluate_model(oracle(split.test), task, ks=(7,))
    with pytest.raises(ValueError, match="NaN"):
        evaluate_model(Table(torch.full((N_USERS, N_ITEMS), float("nan"))), task, ks=(1,))
    with pytest.raises(ValueError, match="shape"):
        evaluate_model(Table(torch.zeros(N_USERS, N_ITEMS - 1)), task, ks=(1,))
    with pytest.raises(ValueError, match="head_fraction"):
        EvaluationTask.from_split(split, head_fraction=1.0)


def test_per_user_values_line_up_with_users(split):
    ev = evaluate_model(oracle(split.test), EvaluationTask.from_split(split), ks=(1,),
                        n_bootstrap=10)
    assert ev.per_user["recall@1"].tolist() == [1.0, 1.0, 0.0]
    assert np.isnan(ev.per_user["known:recall@1"][:2]).all()
