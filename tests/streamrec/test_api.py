"""The HTTP API against a real SQLite store with a real retrained version."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.events import Event
from streamrec.api import create_app
from streamrec.retrain import RetrainPlan, retrain

TOKEN = "s3cret"
QUERY_PATHS = ("/users/a1/recommendations", "/items/A1/similar", "/users/a1/embedding",
               "/items/A1/embedding")


def _community_events() -> list[Event]:
    """Users a0..a9 like items A0..A9, users b0..b9 like B0..B9; each user misses one."""
    events, t = [], 1_700_000_000
    for side in "ab":
        for u in range(10):
            for i in range(10):
                if i != u:
                    t += 60
                    events.append(Event.create(f"{side}{u}", f"{side.upper()}{i}", t))
    return events


def _seen(user: str) -> set[str]:
    side, u = user[0], int(user[1:])
    return {f"{side.upper()}{i}" for i in range(10) if i != u}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A SQLite store with the events and an active ``mf`` version v1, built once."""
    path = tmp_path_factory.mktemp("api") / "template.db"
    graph = GraphStore(f"sqlite:///{path}")
    graph.write_batch(_community_events())
    _retrain(graph, EmbeddingStore(graph.engine))
    graph.engine.dispose()
    return path


@pytest.fixture
def stores(template: Path, tmp_path) -> Iterator[tuple[GraphStore, EmbeddingStore]]:
    """A private copy of the template store (each test may add versions and overlay rows)."""
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{template}{suffix}").exists():
            shutil.copy(f"{template}{suffix}", tmp_path / f"api.db{suffix}")
    graph = GraphStore(f"sqlite:///{tmp_path / 'api.db'}")
    yield graph, EmbeddingStore(graph.engine)
    graph.engine.dispose()


def _retrain(graph: GraphStore, embeddings: EmbeddingStore, model: str = "mf") -> str:
    extra = {"lr": 0.05} if model == "mf" else {}
    plan = RetrainPlan(model=model, epochs=20, dim=8, valid_fraction=0, progress=False,
                       extra=extra)
    return retrain(graph, embeddings, plan).name


@pytest.fixture
def client(stores) -> Iterator[TestClient]:
    graph, embeddings = stores
    app = create_app(graph, embeddings, retrain_token=TOKEN, refresh_interval_s=0.05,
                     ann_backend="numpy")
    with TestClient(app) as c:  # runs the lifespan: first load + background refresher
        yield c


def test_recommendations(client: TestClient) -> None:
    for side in "ab":
        for u in range(10):
            user = f"{side}{u}"
            res = client.get(f"/users/{user}/recommendations", params={"k": 8})
            assert res.status_code == 200, res.text
            body = res.json()
            assert set(body) == {"user_id", "items", "fallback", "version"}
            assert body["user_id"] == user and body["fallback"] is False
            assert body["version"] == "v1"
            items = [r["item_id"] for r in body["items"]]
            assert len(items) == len(set(items)) == 8
            assert not set(items) & _seen(user)
            assert all(isinstance(r["score"], float) for r in body["items"])
    default = client.get("/users/a3/recommendations").json()
    assert len(default["items"]) == 10
    assert default["items"][0]["item_id"] == "A3"
    seen_ok = client.get("/users/a3/recommendations", params={"k": 19, "exclude_seen": False})
    assert len(seen_ok.json()["items"]) == 19
    stranger = client.get("/users/nobody/recommendations", params={"k": 3}).json()
    assert stranger["fallback"] is True and len(stranger["items"]) == 3


def test_similar_and_embeddings(client: TestClient) -> None:
    res = client.get("/items/A1/similar", params={"k": 5})
    assert res.status_code == 200
    body = res.json()
    assert set(body) == {"item_id", "items"} and body["item_id"] == "A1"
    ids = [r["item_id"] for r in body["items"]]
    assert len(ids) == 5 and "A1" not in ids
    for kind, node in (("users", "b2"), ("items", "B2")):
        emb = client.get(f"/{kind}/{node}/embedding").json()
        assert set(emb) == {"id", "kind", "vector", "version", "source", "updated_at"}
        assert emb["id"] == node and emb["kind"] == kind[:-1] and emb["source"] == "base"
        assert len(emb["vector"]) == 8 and emb["version"] == "v1"


@pytest.mark.parametrize("path", ["/items/nope/similar", "/users/nope/embedding",
                                  "/items/nope/embedding"])
def test_unknown_nodes_are_404(client: TestClient, path: str) -> None:
    res = client.get(path)
    assert res.status_code == 404
    assert "unknown" in res.json()["detail"] and "nope" in res.json()["detail"]


@pytest.mark.parametrize("k", ["0", "1001", "-3", "ten"])
def test_bad_k_is_422(client: TestClient, k: str) -> None:
    assert client.get("/users/a1/recommendations", params={"k": k}).status_code == 422
    assert client.get("/items/A1/similar", params={"k": k}).status_code == 422


def test_no_active_version_is_503(tmp_path) -> None:
    graph = GraphStore(f"sqlite:///{tmp_path / 'empty.db'}")
    app = create_app(graph, EmbeddingStore(graph.engine))
    with TestClient(app) as c:
        for path in QUERY_PATHS:
            res = c.get(path)
            assert res.status_code == 503, path
            assert "streamrec retrain" in res.json()["detail"]
        assert c.get("/healthz").json() == {"status": "no_active_version", "served": None}
        versions = c.get("/versions").json()
        assert versions["active"] is None and versions["versions"] == []
        assert versions["overlay_size"] == 0
    graph.engine.dispose()


def test_versions_and_overlay_refresh(client: TestClient, stores) -> None:
    graph, embeddings = stores
    body = client.get("/versions").json()
    assert body["active"] == body["served"] == "v1" and body["overlay_size"] == 0
    (v1,) = body["versions"]
    assert v1["status"] == "active" and v1["model"] == "mf" and v1["dim"] == 8
    assert v1["num_users"] == 20 and v1["num_items"] == 20
    assert body["freshness"]["newest_overlay_at"] is None
    assert 0 <= body["freshness"]["active_version_age_s"] < 60
    assert body["freshness"]["cutoff_age_s"] > 0
    now = time.time()
    idx = graph.node_index("item", ["A2"])["A2"]
    embeddings.write_overlay(1, "item", np.array([idx]), np.full((1, 8), 0.5), now)
    deadline = time.monotonic() + 10
    while client.get("/items/A2/embedding").json()["source"] != "overlay":
        assert time.monotonic() < deadline, "the background refresh never picked the overlay"
        time.sleep(0.05)
    emb = client.get("/items/A2/embedding").json()
    assert emb["vector"] == [0.5] * 8 and emb["updated_at"] == pytest.approx(now)
    fresh = client.get("/versions").json()
    assert fresh["overlay_size"] == 1
    assert fresh["freshness"]["newest_overlay_at"] == pytest.approx(now)
    assert 0 <= fresh["freshness"]["overlay_age_s"] < 60


def test_new_version_is_picked_up(client: TestClient, stores) -> None:
    graph, embeddings = stores
    assert _retrain(graph, embeddings, "popularity") == "v2"
    deadline = time.monotonic() + 10
    while client.get("/users/a1/recommendations").json()["version"] != "v2":
        assert time.monotonic() < deadline, "the new version was never served"
        time.sleep(0.05)
    assert client.get("/healthz").json() == {"status": "ok", "served": "v2"}
    statuses = {v["name"]: v["status"] for v in client.get("/versions").json()["versions"]}
    assert statuses == {"v2": "active", "v1": "retired"}


def test_retrain_auth(stores, client: TestClient) -> None:
    body = {"model": "popularity"}
    assert client.post("/retrain", json=body).status_code == 401
    res = client.post("/retrain", json=body, headers={"Authorization": "Bearer wrong"})
    assert res.status_code == 401 and res.headers["www-authenticate"] == "Bearer"
    graph, embeddings = stores
    closed = TestClient(create_app(graph, embeddings))  # no token configured
    res = closed.post("/retrain", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert res.status_code == 503 and "STREAMREC_RETRAIN_TOKEN" in res.json()["detail"]


@pytest.mark.parametrize("token", ["", "   ", "change-me"])
def test_retrain_stays_off_without_the_operators_own_token(stores, token: str) -> None:
    """An empty token (compose's ``${STREAMREC_RETRAIN_TOKEN:-}`` when unset) or the old
    published placeholder never enables retrain; the queries are served all the same."""
    graph, embeddings = stores
    with TestClient(create_app(graph, embeddings, retrain_token=token,
                               ann_backend="numpy")) as closed:
        res = closed.post("/retrain", json={"model": "popularity"},
                          headers={"Authorization": f"Bearer {token}"})
        assert res.status_code == 503, res.text
        assert "STREAMREC_RETRAIN_TOKEN" in res.json()["detail"]
        assert closed.get("/users/a1/recommendations").status_code == 200


def test_retrain_runs_in_background(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad = client.post("/retrain", json={"model": "bert4rec"}, headers=auth)
    assert bad.status_code == 422 and "unknown model" in bad.json()["detail"]
    assert client.post("/retrain", json={"model": "mf", "epochs": 0},
                       headers=auth).status_code == 422
    assert client.post("/retrain", json={"model": "mf", "cutoff": "yesterday"},
                       headers=auth).status_code == 422
    res = client.post("/retrain", json={"model": "mf", "epochs": 5, "dim": 4,
                                        "cutoff": "2023-11-14T23:00:00Z"}, headers=auth)
    assert res.status_code == 202, res.text
    job_id = res.json()["job_id"]
    deadline = time.monotonic() + 30
    while (job := client.get(f"/retrain/{job_id}").json())["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job["status"] == "succeeded" and job["version"] == "v2", job
    # the job's success refreshes the served snapshot right away
    emb = client.get("/users/a1/embedding").json()
    assert emb["version"] == "v2" and len(emb["vector"]) == 4
    assert client.get("/retrain/nope").status_code == 404


def test_one_retrain_at_a_time(client: TestClient, gated_retrain) -> None:  # type: ignore[no-untyped-def]
    release, started = gated_retrain
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = client.post("/retrain", json={"model": "popularity"}, headers=auth)
    assert first.status_code == 202 and started.wait(10)
    second = client.post("/retrain", json={"model": "popularity"}, headers=auth)
    assert second.status_code == 409 and first.json()["job_id"] in second.json()["detail"]
    release.set()
    deadline = time.monotonic() + 30
    job_id = first.json()["job_id"]
    while client.get(f"/retrain/{job_id}").json()["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    third = client.post("/retrain", json={"model": "popularity"}, headers=auth)
    assert third.status_code == 202
    # wait for it: a retrain still writing while the fixture drops the schema deadlocks
    while client.get(f"/retrain/{third.json()['job_id']}").json()["status"] == "running":
        assert time.monotonic() < deadline + 30
        time.sleep(0.05)


def test_openapi_and_metrics(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/users/{user_id}/recommendations", "/items/{item_id}/similar",
                 "/users/{user_id}/embedding", "/items/{item_id}/embedding", "/versions",
                 "/retrain", "/healthz", "/metrics"):
        assert path in paths, path
    rec = paths["/users/{user_id}/recommendations"]["get"]
    assert rec["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Recommendations")
    client.get("/users/a1/recommendations")
    client.get("/items/nope/similar")
    res = client.get("/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    text = res.text
    for name in ("streamrec_query_latency_seconds_bucket", "streamrec_overlay_size",
                 "streamrec_active_version_age_seconds", "streamrec_ingest_events_total",
                 "streamrec_update_latency_seconds", "streamrec_ingest_consumer_lag"):
        assert name in text, name
    assert 'streamrec_query_latency_seconds_count{endpoint="recommendations"} 1.0' in text
    assert 'streamrec_query_errors_total{endpoint="similar",status="404"} 1.0' in text
    age = next(line for line in text.splitlines()
               if line.startswith("streamrec_active_version_age_seconds "))
    assert 0 <= float(age.split()[1]) < 60


def test_lazy_refresh_without_lifespan(tmp_path) -> None:
    graph = GraphStore(f"sqlite:///{tmp_path / 'lazy.db'}")
    graph.write_batch(_community_events())
    embeddings = EmbeddingStore(graph.engine)
    app = create_app(graph, embeddings, refresh_interval_s=0.0, ann_backend="numpy")
    c = TestClient(app)  # no `with`: no background thread, requests refresh lazily
    assert c.get("/users/a1/recommendations").status_code == 503
    _retrain(graph, embeddings, "popularity")
    res = c.get("/users/a1/recommendations")
    assert res.status_code == 200 and res.json()["version"] == "v1"
    graph.engine.dispose()


def test_overlay_applies_at_once_rebuilds_are_spaced_versions_are_not(stores) -> None:
    graph, embeddings = stores
    app = create_app(graph, embeddings, ann_backend="numpy")
    refresher, service = app.state.refresher, app.state.service
    assert refresher.check() is True and refresher.check() is False  # nothing moved
    refresher.reload_s = 100.0  # pretend a full reload is expensive
    before = service.served.index
    embeddings.write_overlay(1, "user", np.array([0]), np.ones((1, 8)), time.time())
    assert refresher.check() is True and refresher.served.name == "v1"
    assert refresher.overlay_size == 1 and service.served.index is before  # no rebuild
    assert (service.served.snapshot.users[0] == 1.0).all()  # the overlay row is served
    # many updated items: a rebuild is due, but waits for the duty cycle
    items = np.arange(len(service.served.item_ids))
    embeddings.write_overlay(1, "item", items, np.ones((len(items), 8)), time.time())
    assert refresher.check() is True and service.index_fresh_share == 1.0
    assert refresher.check() is False and service.served.index.fresh_share == 1.0
    # while the rebuild waits, newer overlay rows are still served at once
    embeddings.write_overlay(1, "user", np.array([1]), 2 * np.ones((1, 8)), time.time() + 1)
    assert refresher.check() is True and (service.served.snapshot.users[1] == 2.0).all()
    assert service.served.index.fresh_share == 1.0  # not rebuilt yet
    refresher.reload_s = 0.0
    assert refresher.check() is True and service.index_fresh_share == 0.0  # rebuilt
    assert _retrain(graph, embeddings, "popularity") == "v2"
    assert refresher.check() is True and refresher.served.name == "v2"


def test_query_bodies_match_their_documented_models(client: TestClient) -> None:
    """The query endpoints send JSON built by QueryService, not re-validated by FastAPI:
    each body must still be exactly its OpenAPI response model."""
    from streamrec.api import Embedding, Recommendations, SimilarItems

    models = dict(zip(QUERY_PATHS, (Recommendations, SimilarItems, Embedding, Embedding),
                      strict=True))
    for path, model in models.items():
        res = client.get(path)
        assert res.status_code == 200 and res.headers["content-type"] == "application/json"
        body = res.json()
        assert set(body) == set(model.model_fields), path
        assert model.model_validate(body).model_dump() == body, path


FAST_PATH_REQUESTS = (
    "/users/a3/recommendations", "/users/a3/recommendations?k=5",
    "/users/a3/recommendations?k=19&exclude_seen=false",
    "/users/a3/recommendations?exclude_seen=0&other=x", "/users/nobody/recommendations?k=3",
    "/items/A1/similar?k=4", "/items/nope/similar", "/users/b2/embedding",
    "/items/B2/embedding", "/users/nope/embedding",
    # spellings the fast path leaves to FastAPI (its validation decides)
    "/users/a3/recommendations?k=0", "/users/a3/recommendations?k=1001",
    "/users/a3/recommendations?k=ten", "/users/a3/recommendations?k=%2B5",
    "/users/a3/recommendations?k=3&k=4", "/users/a3/recommendations?exclude_seen=No",
    "/items/A1/similar?k=",
)


def test_fast_path_answers_as_fastapi_routing_does(stores) -> None:  # type: ignore[no-untyped-def]
    graph, embeddings = stores
    answers = {}
    for fast in (True, False):
        app = create_app(graph, embeddings, ann_backend="numpy", fast_path=fast)
        with TestClient(app) as c:
            answers[fast] = [c.get(path) for path in FAST_PATH_REQUESTS]
    for path, fast, routed in zip(FAST_PATH_REQUESTS, answers[True], answers[False],
                                  strict=True):
        assert (fast.status_code, fast.content) == (routed.status_code, routed.content), path
        assert fast.headers["content-type"] == routed.headers["content-type"], path
    assert {r.status_code for r in answers[True]} == {200, 404, 422}


@pytest.mark.parametrize(("path", "query", "hit"), [
    ("/users/u%201/recommendations", b"k=7&exclude_seen=true", ("recommendations", "u%201",
                                                                  {"k": 7, "exclude_seen": True})),
    ("/items/i/similar", b"k=1000&exclude_seen=zzz", ("similar", "i", {"k": 1000})),
    ("/items/i/embedding", b"k=zzz", ("item_embedding", "i", {})),
    ("/users/u/recommendations", b"k=01", None),
    ("/users/u/recommendations", b"exclude_seen=True", None),
    ("/users/u/recommendations/", b"", None),
    ("/users/a/b/embedding", b"", None),
    ("/versions", b"", None),
])
def test_fast_path_takes_only_plain_spellings(path: str, query: bytes, hit: object) -> None:
    from streamrec.api_queries import QueryFastPath

    scope = {"type": "http", "method": "GET", "path": path, "query_string": query,
             "root_path": ""}
    assert QueryFastPath.match(scope) == hit
    assert QueryFastPath.match({**scope, "method": "HEAD"}) is None
    assert QueryFastPath.match({**scope, "root_path": "/api"}) is None
