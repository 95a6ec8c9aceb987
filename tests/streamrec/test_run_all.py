"""`streamrec run`: one process ingests, updates, schedules and answers HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from store.embeddings import EmbeddingStore
from store.graph import GraphStore
from stream.broker import free_port
from stream.synthetic import generate
from streamrec.retrain import RetrainPlan, retrain
from tests.integration.helpers import produce

pytestmark = pytest.mark.integration


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_run_ingests_updates_and_serves(broker, tmp_path, topic_name) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'run.db'}"
    events = list(generate(n_events=3000, seed=31, days=10).events())
    graph = GraphStore(url)
    graph.write_batch(events[:2000])
    retrain(graph, EmbeddingStore(graph.engine),
            RetrainPlan(model="mf", epochs=2, dim=16, valid_fraction=0.2, progress=False))
    produce(broker.bootstrap, topic_name, events[2000:])
    port = free_port()
    env = {**os.environ, "STREAMREC_BOOTSTRAP": broker.bootstrap, "STREAMREC_STORE": url,
           "STREAMREC_KAFKA_MAX_POLL_INTERVAL_MS": "2000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamrec.cli", "run", "--topic", topic_name, "--group",
         "run-test", "--port", str(port), "--model", "popularity"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while graph.counts()["interactions"] < len(events):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "run did not ingest the stream"
            time.sleep(0.2)
        user = events[-1].user_id
        while True:  # the API refreshes in the background
            try:
                body = _get(f"http://127.0.0.1:{port}/users/{user}/embedding")
                if body["source"] == "overlay":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the API never served the overlay row"
            time.sleep(0.3)
        assert _get(f"http://127.0.0.1:{port}/healthz")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "run done" in out
    finally:
        if proc.poll() is None:
            proc.kill()
        graph.engine.dispose()
