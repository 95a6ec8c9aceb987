"""The prequential drift watcher: drops trigger (when enabled), stationary streams don't."""

from __future__ import annotations

import numpy as np
import pytest

from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.synthetic import generate
from streamrec.drift import DriftHook, PrequentialDrift, chain, service_top_k
from streamrec.queries import QueryService
from streamrec.retrain import RetrainPlan, retrain


def _switching_hits(seed: int, n: int = 2000, high: float = 0.6, low: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.r_[rng.random(n) < high, rng.random(n) < low]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_drop_calls_back_once_when_enabled(seed: int) -> None:
    calls: list[str] = []
    drift = PrequentialDrift(on_drift=calls.append, enabled=True)
    for hit in _switching_hits(seed):
        drift.update(hit)
    assert len(calls) == 1 and "dropped" in calls[0]
    assert drift.detections >= 1 and drift.hit_rate < 0.3


def test_a_drop_is_only_logged_when_disabled(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    drift = PrequentialDrift(on_drift=calls.append)  # enabled=False by default
    with caplog.at_level("WARNING", logger="streamrec.drift"):
        for hit in _switching_hits(0):
            drift.update(hit)
    assert calls == [] and drift.drops >= 1
    assert any("early retrain disabled" in r.message for r in caplog.records)


def test_a_rise_does_not_call_back() -> None:
    calls: list[str] = []
    drift = PrequentialDrift(on_drift=calls.append, enabled=True)
    for hit in _switching_hits(0, high=0.1, low=0.6):
        drift.update(hit)
    assert calls == [] and drift.hit_rate > 0.4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_false_alarm_on_a_stationary_stream(seed: int) -> None:
    calls: list[str] = []
    drift = PrequentialDrift(on_drift=calls.append, enabled=True)
    for hit in np.random.default_rng(seed).random(6000) < 0.3:
        drift.update(hit)
    assert calls == [] and drift.detections == 0
    assert abs(drift.hit_rate - 0.3) < 0.05


def test_observe_scores_against_top_k_and_samples() -> None:
    top = {"u1": {"a", "b"}}

    def top_k(user: str) -> set[str]:
        if user not in top:
            raise LookupError(user)
        return top[user]

    drift = PrequentialDrift(top_k, sample_every=2)
    results = [drift.observe("u1", "a"), drift.observe("u1", "a"), drift.observe("u1", "z"),
               drift.observe("u9", "a"), drift.observe("u9", "a")]
    assert results == [True, None, False, None, None]
    assert drift.observed == 2 and drift.hits == 1
    with pytest.raises(ValueError):
        PrequentialDrift(sample_every=0)
    with pytest.raises(ValueError):
        PrequentialDrift().observe("u1", "a")


def test_hook_scores_ingested_batches_against_the_served_version(tmp_path) -> None:
    graph = GraphStore(f"sqlite:///{tmp_path / 'drift.db'}")
    events = list(generate(n_events=2000, seed=1).events())
    graph.write_batch(events[:1500])
    embeddings = EmbeddingStore(graph.engine)
    service = QueryService(graph, embeddings, ann_backend="numpy")
    drift = PrequentialDrift(service_top_k(service, k=20))
    hook = DriftHook(drift, service)
    seen: list[object] = []
    on_batch = chain(hook, None, seen.append)
    on_batch(graph.write_batch(events[1500:1600]))  # no version yet: nothing scored
    assert drift.observed == 0 and len(seen) == 1
    retrain(graph, embeddings, RetrainPlan(model="popularity", progress=False))
    on_batch(graph.write_batch(events[1600:]))
    assert 0 < drift.observed <= 400
    assert 0 < drift.hits <= drift.observed  # popular items are hit now and then
    graph.engine.dispose()
