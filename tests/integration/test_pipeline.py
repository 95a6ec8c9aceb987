"""The event pipeline end to end: real broker, real SQLite file and real PostgreSQL."""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest

from store.graph import GraphStore
from stream.synthetic import generate
from tests.integration.helpers import (
    committed_offsets,
    end_offsets,
    ingest_in_process,
    ingest_process,
    produce,
    produce_raw,
)

pytestmark = pytest.mark.integration


def _group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


def test_10k_events_stored_once_and_replay_counted_as_duplicates(broker, store_url, topic_name):
    events = list(generate(n_events=10_000, seed=11).events())
    produce(broker.bootstrap, topic_name, events)
    store = GraphStore(store_url)
    first = ingest_in_process(broker.bootstrap, topic_name, _group(), store)
    assert (first.consumed, first.stored, first.duplicates) == (10_000, 10_000, 0)
    assert store.counts()["interactions"] == 10_000

    produce(broker.bootstrap, topic_name, events)  # the same events again
    group = _group()  # a fresh group reads all 20,000 messages
    second = ingest_in_process(broker.bootstrap, topic_name, group, store)
    assert (second.consumed, second.stored, second.duplicates) == (20_000, 0, 20_000)
    assert store.counts()["interactions"] == 10_000
    assert store.event_ids() == {e.event_id for e in events}
    assert committed_offsets(broker.bootstrap, topic_name, group) == end_offsets(
        broker.bootstrap, topic_name
    )
    store.engine.dispose()


def test_sigkill_mid_stream_then_restart_stores_every_event_once(broker, store_url, topic_name):
    events = list(generate(n_events=30_000, seed=12).events())
    produce(broker.bootstrap, topic_name, events)
    group = _group()
    store = GraphStore(store_url)
    proc = ingest_process(broker.bootstrap, topic_name, group, store_url, "--batch-size", "500")
    deadline = time.monotonic() + 60
    while store.counts()["interactions"] < 3_000:  # well into the stream
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "ingest made no progress"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = store.counts()["interactions"]
    assert 0 < partial < len(events)

    restart = ingest_process(
        broker.bootstrap, topic_name, group, store_url, "--idle-exit", "3"
    )
    out, err = restart.communicate(timeout=120)
    assert restart.returncode == 0, err
    assert "ingest done" in out
    assert store.event_ids() == {e.event_id for e in events}
    assert store.counts()["interactions"] == len(events)
    store.engine.dispose()


def test_malformed_messages_go_to_dead_letters_and_offsets_move_past(
    broker, store_url, topic_name
):
    good = [
        json.dumps({"user_id": f"u{k}", "item_id": f"i{k}", "ts": 1_700_000_000 + k}).encode()
        for k in range(5)
    ]
    bad = {
        b"not json at all": "not valid JSON",
        b'["a", "list"]': "must be a JSON object",
        b'{"item_id": "i1", "ts": 1}': "missing field 'user_id'",
        b'{"user_id": 7, "item_id": "i1", "ts": 1}': "field 'user_id' must be a string",
        b'{"user_id": "u", "item_id": "i", "ts": "yesterday"}': "not epoch time or ISO-8601",
        b'{"user_id": "u", "item_id": "i", "ts": "2024-01-01T00:00:00"}': "no time zone",
        b'{"user_id": "u", "item_id": "i", "ts": 1, "weight": -2}': "must be a finite number > 0",
        json.dumps({"user_id": "u" * 500, "item_id": "i", "ts": 1}).encode(): "longer than",
        b"\xff\xfe\x00garbage": "not UTF-8",
    }
    values: list[bytes | None] = []
    for k, raw in enumerate(bad):  # interleave good and bad
        values.append(raw)
        if k < len(good):
            values.append(good[k])
    produce_raw(broker.bootstrap, topic_name, values)
    store = GraphStore(store_url)
    group = _group()
    stats = ingest_in_process(broker.bootstrap, topic_name, group, store, batch_size=4)
    assert (stats.consumed, stats.stored, stats.dead_letters) == (len(values), 5, len(bad))
    rows = {row["raw"]: row for row in store.dead_letter_rows(limit=100)}
    assert set(rows) == set(bad)
    for raw, reason in bad.items():
        assert reason in rows[raw]["error"], (raw, rows[raw]["error"])
        assert rows[raw]["topic"] == topic_name and rows[raw]["kafka_partition"] == 0
    assert committed_offsets(broker.bootstrap, topic_name, group) == {0: len(values)}
    store.engine.dispose()


def test_two_consumers_in_one_group_split_four_partitions(broker, store_url, topic_name):
    events = list(generate(n_events=20_000, seed=13).events())
    produce(broker.bootstrap, topic_name, events, partitions=4)
    GraphStore(store_url).engine.dispose()  # create the tables before two writers race
    group = _group()
    procs = [
        ingest_process(broker.bootstrap, topic_name, group, store_url, "--idle-exit", "4",
                       "--batch-size", "500")
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    consumed = [int(out.split("consumed=")[1].split()[0]) for out, _ in outs]
    assert sum(consumed) >= len(events)
    assert min(consumed) > 0, f"one consumer got no partitions: {consumed}"
    store = GraphStore(store_url)
    assert store.event_ids() == {e.event_id for e in events}
    assert store.counts()["interactions"] == len(events)
    store.engine.dispose()


def test_sigterm_flushes_and_commits_what_it_stored(broker, tmp_path, topic_name):
    events = list(generate(n_events=20_000, seed=14).events())
    produce(broker.bootstrap, topic_name, events, partitions=1)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = GraphStore(url)
    group = _group()
    proc = ingest_process(broker.bootstrap, topic_name, group, url, "--batch-size", "200")
    deadline = time.monotonic() + 60
    while store.counts()["interactions"] < 2_000:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGTERM" in err and "ingest done" in out
    stored = store.counts()["interactions"]
    assert stored < len(events)
    # everything stored was committed, and nothing beyond it: offsets are contiguous from 0
    assert committed_offsets(broker.bootstrap, topic_name, group) == {0: stored}
    store.engine.dispose()


def _copy_active_version(source, target) -> None:  # type: ignore[no-untyped-def]
    """Publish ``source``'s active base (vectors, updater, ingest sequence) in ``target``."""
    info = source.active_version()
    snap = source.load(info.id, include_updater_state=True, include_overlay=False)
    copy = target.create_version(info.model, info.cutoff, snap.users, snap.items,
                                 hyper_parameters=info.hyper_parameters, metrics=info.metrics,
                                 updater_state=snap.updater_state, ingest_seq=info.ingest_seq)
    target.activate(copy)


def _overlay_by_id(store: GraphStore, embeddings) -> dict[tuple[str, str], object]:  # type: ignore[no-untyped-def]
    merged = embeddings.load()
    out = {}
    for kind, rows in (("user", merged.overlay_users), ("item", merged.overlay_items)):
        ids = store.node_ids(kind)
        out.update({(kind, ids[idx]): merged.vector(kind, idx) for idx in rows})
    return out


def test_one_and_two_updating_processes_serve_the_same_vectors(broker, postgres_url, tmp_path,
                                                               topic_name):
    """Scale-out: two `ingest --update` processes share PostgreSQL and split 4 partitions;
    one process alone fills a SQLite store from the same base: the overlays agree."""
    import numpy as np

    from store.embeddings import EmbeddingStore
    from streamrec.retrain import RetrainPlan, retrain

    events = list(generate(n_events=6000, seed=15, days=10).events())
    one_url = f"sqlite:///{tmp_path / 'one.db'}"
    one = GraphStore(one_url)
    two = GraphStore(postgres_url)
    for store in (one, two):  # the same dense indices for the base's nodes
        store.write_batch(events[:3000])
    one_embeddings, two_embeddings = EmbeddingStore(one.engine), EmbeddingStore(two.engine)
    info = retrain(one, one_embeddings, RetrainPlan(model="mf", epochs=2, dim=16,
                                                    valid_fraction=0.2, progress=False))
    assert info.has_updater_state and info.ingest_seq == 3000
    _copy_active_version(one_embeddings, two_embeddings)
    produce(broker.bootstrap, topic_name, events[3000:], partitions=4)
    args = ("--idle-exit", "4", "--batch-size", "300", "--update")
    procs = [ingest_process(broker.bootstrap, topic_name, _group(), one_url, *args)]
    group = _group()
    procs += [ingest_process(broker.bootstrap, topic_name, group, postgres_url, *args)
              for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    consumed = [int(out.split("consumed=")[1].split()[0]) for out, _ in outs[1:]]
    assert min(consumed) > 0, f"one of the two processes got no partitions: {consumed}"
    for store in (one, two):
        assert store.event_ids() == {e.event_id for e in events}
    single, shared = _overlay_by_id(one, one_embeddings), _overlay_by_id(two, two_embeddings)
    users = {("user", e.user_id) for e in events[3000:]}
    items = {("item", e.item_id) for e in events[3000:]}
    assert users | items == set(single) == set(shared)
    diff = max(float(np.abs(single[k] - shared[k]).max()) for k in single)
    print(f"1 vs 2 updating processes: {len(single)} overlay rows, max |diff| {diff:.2e}")
    assert diff < 1e-4, f"1 vs 2 processes differ by up to {diff}"
    for store in (one, two):
        store.engine.dispose()
