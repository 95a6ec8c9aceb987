"""Retrain job and query service against real stores (SQLite file and PostgreSQL)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.events import Event
from streamrec.cli import app
from streamrec.queries import QueryService, UnknownItem, UnknownUser
from streamrec.retrain import RetrainError, RetrainPlan, retrain


def _community_events() -> list[Event]:
    """Users a0..a9 like items A0..A9, users b0..b9 like B0..B9; each user misses one."""
    events = []
    t = 1_700_000_000
    for side in "ab":
        for u in range(10):
            for i in range(10):
                if i == u:
                    continue  # the held-out item of this user
                t += 60
                events.append(Event.create(f"{side}{u}", f"{side.upper()}{i}", t))
    return events


@pytest.fixture
def stores(store_url: str):  # type: ignore[no-untyped-def]
    graph = GraphStore(store_url)
    graph.write_batch(_community_events())
    yield graph, EmbeddingStore(graph.engine)
    graph.engine.dispose()


@pytest.mark.parametrize("model", ["mf", "lightgcn", "popularity"])
def test_retrain_publishes_and_serves(stores, model: str) -> None:
    graph, embeddings = stores
    extra = {} if model == "popularity" else {"lr": 0.05}
    plan = RetrainPlan(model=model, epochs=30, dim=16, valid_fraction=0, progress=False,
                       extra=extra)
    info = retrain(graph, embeddings, plan)
    assert embeddings.active_version().id == info.id and info.model == model
    service = QueryService(graph, embeddings, ann_backend="numpy")
    rec = service.recommend("a3", k=5)
    assert rec["fallback"] is False and rec["version"] == info.name
    items = [r["item_id"] for r in rec["items"]]
    seen = {f"A{i}" for i in range(10) if i != 3}
    assert len(items) == 5 and len(set(items)) == 5 and not seen & set(items)
    if model != "popularity":
        assert items[0] == "A3"  # the only unseen in-community item ranks first


def test_queries_contract(stores) -> None:
    graph, embeddings = stores
    retrain(graph, embeddings, RetrainPlan(model="mf", epochs=30, dim=8, valid_fraction=0,
                                           progress=False, extra={"lr": 0.05}))
    service = QueryService(graph, embeddings)
    fallback = service.recommend("stranger", k=3)
    assert fallback["fallback"] is True and len(fallback["items"]) == 3
    sim = service.similar("A1", k=4)
    assert "A1" not in [r["item_id"] for r in sim["items"]] and len(sim["items"]) == 4
    assert sum(r["item_id"].startswith("A") for r in sim["items"]) >= 3
    emb = service.embedding("user", "b2")
    assert emb["kind"] == "user" and emb["source"] == "base" and len(emb["vector"]) == 8
    with pytest.raises(UnknownItem):
        service.similar("nope")
    with pytest.raises(UnknownUser):
        service.embedding("user", "nope")
    with pytest.raises(ValueError, match="k must be"):
        service.recommend("a1", k=0)


def test_failed_retrain_keeps_the_old_version(stores, monkeypatch) -> None:
    graph, embeddings = stores
    first = retrain(graph, embeddings, RetrainPlan(model="popularity", valid_fraction=0))
    import models.mf

    def broken_fit(self, graph, valid=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("out of memory")

    monkeypatch.setattr(models.mf.MFBPR, "fit", broken_fit)
    with pytest.raises(RuntimeError, match="out of memory"):
        retrain(graph, embeddings, RetrainPlan(model="mf", epochs=1, valid_fraction=0))
    assert embeddings.active_version().id == first.id
    assert QueryService(graph, embeddings).recommend("a1", k=2)["version"] == first.name


def test_retrain_errors(tmp_path) -> None:
    graph = GraphStore(f"sqlite:///{tmp_path / 'empty.db'}")
    embeddings = EmbeddingStore(graph.engine)
    with pytest.raises(RetrainError, match="no interactions"):
        retrain(graph, embeddings, RetrainPlan(model="mf"))
    with pytest.raises(RetrainError, match="unknown model"):
        retrain(graph, embeddings, RetrainPlan(model="bert4rec"))


def test_retrain_respects_cutoff(stores) -> None:
    graph, embeddings = stores
    cutoff = float(np.median(graph.snapshot().ts))
    info = retrain(graph, embeddings, RetrainPlan(model="popularity", cutoff=cutoff,
                                                  valid_fraction=0))
    assert info.cutoff == cutoff and info.metrics["num_edges"] == 90


def test_cli_round_trip(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    GraphStore(url).write_batch(_community_events())
    runner = CliRunner()
    res = runner.invoke(app, ["retrain", "--model", "mf", "--epochs", "20", "--dim", "8",
                              "--store", url])
    assert res.exit_code == 0, res.output
    assert "v1 active" in res.output
    res = runner.invoke(app, ["recommend", "--user", "a1", "-k", "3", "--json", "--store", url])
    body = json.loads(res.stdout)
    assert set(body) == {"user_id", "items", "fallback", "version"} and len(body["items"]) == 3
    res = runner.invoke(app, ["embedding", "--item", "B2", "--json", "--store", url])
    assert set(json.loads(res.stdout)) == {"id", "kind", "vector", "version", "source",
                                           "updated_at"}
    res = runner.invoke(app, ["similar", "--item", "missing", "--store", url])
    assert res.exit_code == 1 and "unknown item" in res.output
    res = runner.invoke(app, ["retrain", "--model", "nope", "--store", url])
    assert res.exit_code == 1 and "unknown model" in res.output


def test_a_retrain_in_two_processes_publishes_one_process_vectors(tmp_path) -> None:
    """``--processes 2`` fits the trend ranker's LightGCN base data-parallel (the early
    stopping fit and the refit): the published vectors are those of one process."""
    events = _community_events()
    # shuffled in time, so that the newest tenth has known users meeting new items
    order = np.random.default_rng(0).permutation(len(events))
    events = [Event.create(e.user_id, e.item_id, events[j].ts)
              for e, j in zip(events, order, strict=True)]
    vectors = []
    for processes in (1, 2):
        graph = GraphStore(f"sqlite:///{tmp_path / f'p{processes}.db'}")
        graph.write_batch(events)
        embeddings = EmbeddingStore(graph.engine)
        plan = RetrainPlan(model="trend", epochs=3, dim=8, progress=False, processes=processes,
                           train_updater=False, extra={"base_kwargs": {"device": "cpu"}})
        info = retrain(graph, embeddings, plan)
        assert info.metrics["base_epochs"] >= 1  # the base was validated, then refitted
        snap = embeddings.load(info.id)
        vectors.append((snap.users, snap.items))
        graph.engine.dispose()
    np.testing.assert_allclose(vectors[1][0], vectors[0][0], atol=1e-5)
    np.testing.assert_allclose(vectors[1][1], vectors[0][1], atol=1e-5)
    assert np.abs(vectors[0][0]).max() > 0
