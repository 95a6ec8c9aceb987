"""`streamrec ingest --metrics-port`: a standalone ingest process serves Prometheus metrics."""

from __future__ import annotations

import socket
import time
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.broker import free_port
from stream.synthetic import generate
from tests.integration.helpers import ingest_process, produce

pytestmark = pytest.mark.integration


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` as {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_ingest_serves_lag_counts_and_update_latency(broker, tmp_path, topic_name) -> None:  # type: ignore[no-untyped-def]
    events = list(generate(n_events=2000, seed=43).events())
    produce(broker.bootstrap, topic_name, events, partitions=2)
    url = f"sqlite:///{tmp_path / 'ingest.db'}"
    port = free_port()
    # a fresh group: the local broker wedges a group a consumer left mid-join
    proc = ingest_process(broker.bootstrap, topic_name, f"metrics-{uuid.uuid4().hex[:8]}", url,
                          "--metrics-port", str(port), "--idle-exit", "3", "--batch-size", "500")
    consumed = ("streamrec_ingest_events_total", (("outcome", "consumed"),))
    total_lag = ("streamrec_ingest_consumer_lag", (("partition", "all"),))
    try:
        deadline = time.monotonic() + 60
        samples: dict = {}
        while samples.get(consumed) != len(events) or samples.get(total_lag) != 0:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, f"metrics never showed the stream: {samples}"
            time.sleep(0.2)
            try:
                samples = _scrape(port)
            except OSError:  # the server is not up yet
                continue
        assert samples[("streamrec_ingest_events_total", (("outcome", "stored"),))] == 2000
        assert samples[("streamrec_ingest_events_total", (("outcome", "dead_letter"),))] == 0
        assert samples[("streamrec_ingest_consumer_lag", (("partition", "0"),))] == 0
        assert samples[("streamrec_ingest_consumer_lag", (("partition", "1"),))] == 0
        batches = samples[("streamrec_ingest_batches_total", ())]
        assert batches >= 4  # 2000 events in batches of at most 500
        # the updater ran (a no-op before the first retrain) once per batch, timed
        assert samples[("streamrec_update_latency_seconds_count", ())] == batches
        newest = samples[("streamrec_ingest_last_event_timestamp_seconds", ())]
        assert newest == max(e.ts for e in events)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "ingest done" in out and "lag=0" in out
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass  # the metrics server stopped with the process
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ingest_refuses_a_taken_metrics_port(broker, tmp_path, topic_name) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = ingest_process(broker.bootstrap, topic_name, f"taken-{uuid.uuid4().hex[:8]}",
                              f"sqlite:///{tmp_path / 'x.db'}", "--metrics-port", str(port))
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "cannot serve metrics" in err and "--metrics-port" in err
