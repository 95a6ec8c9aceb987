"""run_evaluation end to end on a tiny stream: files, reproducibility, model resolution."""

import json
import math

import matplotlib.image
import numpy as np
import pytest
import torch

from evaluation.runner import run_evaluation
from models.base import InteractionGraph, Recommender

DAY = 86_400.0


@pytest.fixture(scope="module")
def graph():
    rng = np.random.default_rng(7)
    n = 600
    user = rng.integers(0, 40, n)
    item = np.minimum(rng.zipf(1.3, n) - 1, 59)
    ts = np.sort(rng.uniform(0, 30 * DAY, n)) + 1.6e9
    return InteractionGraph.from_arrays(user, item, ts, num_users=45, num_items=60)


class Popular(Recommender):
    name = "popular"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, graph, valid=None):
        self.counts = np.bincount(graph.item, minlength=graph.num_items)
        self.num_users = graph.num_users
        return self

    def user_embeddings(self):
        return torch.ones(self.num_users, 1)

    def item_embeddings(self):
        return torch.from_numpy(self.counts).float().view(-1, 1)


class RandomEmb(Recommender):
    """Random embeddings drawn from ``seed``: reproducible only if the seed reaches it."""

    def __init__(self, seed: int = 0, dim: int = 4):
        self.seed, self.dim = seed, dim

    def fit(self, graph, valid=None):
        gen = torch.Generator().manual_seed(self.seed)
        self.u = torch.randn(graph.num_users, self.dim, generator=gen)
        self.i = torch.randn(graph.num_items, self.dim, generator=gen)
        return self

    def user_embeddings(self):
        return self.u

    def item_embeddings(self):
        return self.i

    def hyper_parameters(self):
        return {"seed": self.seed, "dim": self.dim}


def factory(name, **kwargs):
    return {"popular": Popular, "random": RandomEmb}[name](**kwargs)


def _run(graph, out_dir=None, **kwargs):
    return run_evaluation(graph, ["popular", "random"], model_factory=factory, seed=3,
                          n_bootstrap=100, out_dir=out_dir, dataset_name="tiny",
                          progress=False, **kwargs)


def _strip_timing(value):
    if isinstance(value, dict):
        return {k: _strip_timing(v) for k, v in value.items()
                if not k.endswith("_seconds") and k != "started_at"}
    if isinstance(value, list):
        return [_strip_timing(v) for v in value]
    return value


def test_report_files_exist_and_parse(graph, tmp_path):
    result = _run(graph, out_dir=tmp_path, streaming_retrain=True)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == result
    assert {"split", "models", "streaming"} <= on_disk.keys()
    for name in ("popular", "random"):
        m = on_disk["models"][name]
        for key in ("recall@20", "ndcg@20", "hit@20", "precision@10", "mrr@50",
                    "recall_known@20", "coverage@20", "popularity@20"):
            assert isinstance(m[key], float) and m[key] >= 0, key
        lo, hi = m["recall@20_ci"]
        assert lo <= m["recall@20"] <= hi
        assert all(k == k.lower() for k in m)
    assert on_disk["split"]["t2_iso"].endswith("Z")
    # every model with embeddings of dim >= 2 also runs as "base + incremental updates"
    # and the baselines are refreshed at the same cadence; approaches are named after models
    assert on_disk["streaming"]["summary"].keys() == {
        "popular (stale)", "random (stale)", "random (+incremental)", "popular (retrain)",
        "random (retrain)", "pop-alltime (refreshed)", "pop-recent (refreshed)",
        "pop-decayed (refreshed)"}
    roles = on_disk["streaming"]["approach_info"]
    assert roles["random (+incremental)"] == {"model": "random", "kind": "incremental",
                                              "baseline": False, "updater": "untrained"}
    assert roles["pop-recent (refreshed)"]["baseline"] is True
    assert "window_policy" in on_disk["streaming"]
    html = (tmp_path / "report.html").read_text()
    assert html.count('<img alt="') == 3 and "data:image/png;base64," in html
    md = (tmp_path / "report.md").read_text()
    for needle in ("tiny", "|P ∩ R| / min(|P|, K)", "cold_scores", "torch-geometric",
                   "Headline", "best trending baseline",
                   on_disk["split"]["t1_iso"], "seed 3"):
        assert needle in md, needle
    for png in ("metrics_vs_k.png", "streaming.png", "activity.png"):
        image = matplotlib.image.imread(tmp_path / png)
        assert image.ndim == 3 and image.shape[0] > 100


def test_a_run_is_reproducible_given_a_seed(graph):
    a, b = _run(graph, streaming=False), _run(graph, streaming=False)
    assert _strip_timing(a) == _strip_timing(b)
    assert a["model_info"]["random"]["hyper_parameters"]["seed"] == 3
    assert a["streaming"] == {}


def test_instances_fit_on_train_plus_valid_and_explicit_times(graph):
    t1, t2 = 1.6e9 + 20 * DAY, 1.6e9 + 25 * DAY
    out = run_evaluation(graph, {"pop": Popular()}, t1=t1, t2=t2, fit_on="train+valid",
                         ks=(5,), n_bootstrap=20, streaming=False, progress=False)
    assert out["split"]["t1"] == t1 and out["split"]["train_frac"] is None
    assert "before t2" in out["protocol"]["masking"]
    assert not any(math.isnan(v) for v in out["models"]["pop"].values()
                   if isinstance(v, float))


def test_unknown_model_names_and_bad_arguments(graph, monkeypatch):
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        run_evaluation(graph, ["popular", "nope"], model_factory=factory, progress=False)
    with pytest.raises(ValueError, match="catalogue"):
        run_evaluation(graph, ["popular"], model_factory=factory, ks=(61,), progress=False)
    with pytest.raises(TypeError, match="string"):
        run_evaluation(graph, "popular", model_factory=factory, progress=False)
    with pytest.raises(TypeError, match="not a Recommender"):
        run_evaluation(graph, {"x": object()}, progress=False)  # type: ignore[dict-item]
    import models

    monkeypatch.delattr(models, "make_model", raising=False)
    with pytest.raises(ImportError, match="model_factory"):
        run_evaluation(graph, ["popular"], progress=False)
