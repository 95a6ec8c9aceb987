"""IndexCache: a read-back index answers as its builder, a bad entry is rebuilt, moved rows are
scored with the caller's vectors, and of processes that start together only one builds."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

from store.ann import IVF_REFINE_FACTOR, ItemIndex
from store.ann_cache import IndexCache

DIM = 8
OPTIONS = {"exact_threshold": 100}  # HNSW from 100 items on


def _data(items: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((items, DIM)).astype(np.float32)
    labels = np.sort(rng.choice(10 * items, items, replace=False)).astype(np.int64)
    return vectors, labels, rng.standard_normal((30, DIM)).astype(np.float32)


def _get(cache: IndexCache, items: np.ndarray, labels: np.ndarray, **kwargs):  # type: ignore[no-untyped-def]
    return cache.get_or_build("v1-test", items, labels,
                              lambda: ItemIndex(items, **OPTIONS), **kwargs, **OPTIONS)


def _answers(index: ItemIndex, labels: np.ndarray, queries: np.ndarray
             ) -> tuple[list[list[int]], np.ndarray]:
    exclude = [labels[:0] if r % 2 else np.arange(r % 7) for r in range(len(queries))]
    scores, pos = index.search(queries, 10, exclude=exclude)
    return [labels[p[p >= 0]].tolist() for p in pos], scores


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_a_read_back_index_answers_as_the_one_that_built_it(tmp_path: Path, kind: str) -> None:
    items, labels, queries = _data()
    options = OPTIONS if kind == "hnsw" else {"exact_threshold": 100, "ivf_threshold": 100}
    built, built_labels = IndexCache(tmp_path).get_or_build(
        "v1-test", items, labels, lambda: ItemIndex(items, **options), **options)
    assert built.kind == kind
    other = IndexCache(tmp_path)  # another process's view of the same directory
    loaded, loaded_labels = other.get_or_build("v1-test", items, labels, lambda: 1 / 0,
                                               **options)
    assert loaded.kind == kind and loaded.nprobe == built.nprobe
    if kind == "ivf":  # the exact re-rank of the shortlisted codes travels with the file
        assert loaded._index.k_factor == built._index.k_factor == IVF_REFINE_FACTOR
    assert (other.builds, other.loads) == (0, 1)
    assert loaded._index is not built._index and loaded.space == built.space
    np.testing.assert_array_equal(loaded_labels, built_labels)
    got, got_scores = _answers(loaded, loaded_labels, queries)
    want, want_scores = _answers(built, built_labels, queries)
    assert got == want
    np.testing.assert_array_equal(got_scores, want_scores)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "index byte": lambda d: _flip_byte(d / "v1-test.faiss"),
    "index truncated": lambda d: (d / "v1-test.faiss").write_bytes(
        (d / "v1-test.faiss").read_bytes()[:100]),
    "labels": lambda d: _flip_byte(d / "v1-test.labels.npy"),
    "metadata": lambda d: (d / "v1-test.json").write_text("{not json"),
    "format": lambda d: (d / "v1-test.json").write_text(json.dumps(
        {**json.loads((d / "v1-test.json").read_text()), "format": 0})),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_entry_is_rebuilt_not_served(tmp_path: Path, corruption: str) -> None:
    items, labels, queries = _data()
    _get(IndexCache(tmp_path), items, labels)
    CORRUPTIONS[corruption](tmp_path)
    cache = IndexCache(tmp_path)
    assert cache.load("v1-test") is None
    index, got_labels = _get(cache, items, labels)
    assert (cache.builds, cache.loads) == (1, 0)
    np.testing.assert_array_equal(got_labels, labels)
    again = IndexCache(tmp_path)  # the rebuilt entry verifies and is read back
    loaded, _ = _get(again, items, labels)
    assert (again.builds, again.loads) == (0, 1)
    assert _answers(loaded, labels, queries)[0] == _answers(index, labels, queries)[0]


def test_moved_and_new_rows_are_scored_with_the_callers_vectors(tmp_path: Path) -> None:
    items, labels, queries = _data()
    old, _ = _get(IndexCache(tmp_path), items[:-4], labels[:-4])  # 4 items were not there
    now = items.copy()
    moved = np.array([3, 50, 51])
    now[moved] = np.random.default_rng(1).standard_normal((3, DIM))
    cache = IndexCache(tmp_path)
    index, got_labels = _get(cache, now, labels)
    assert (cache.builds, cache.loads) == (0, 1) and index.fresh_share == 7 / 400
    np.testing.assert_array_equal(got_labels, labels)  # the new ones were the last labels
    # the answers of the old index updated by hand, and they are the current vectors' ones
    want = old.updated(np.concatenate([moved, np.arange(396, 400)]),
                       np.concatenate([now[moved], now[396:]]))
    assert _answers(index, got_labels, queries)[0] == _answers(want, labels, queries)[0]
    np.testing.assert_array_equal(index.items, now)


def test_too_many_moved_rows_rebuild_and_republish(tmp_path: Path) -> None:
    items, labels, _ = _data()
    _get(IndexCache(tmp_path), items, labels)
    now = items.copy()
    now[:40] += 1.0  # 10% moved
    cache = IndexCache(tmp_path)
    _get(cache, now, labels, max_fresh_share=0.05)
    assert (cache.builds, cache.loads) == (1, 0)
    loaded = IndexCache(tmp_path).load("v1-test")
    assert loaded is not None
    np.testing.assert_array_equal(loaded.built.vectors(), now)


def test_an_entry_of_newer_data_is_not_served_to_older_data(tmp_path: Path) -> None:
    items, labels, _ = _data()
    _get(IndexCache(tmp_path), items, labels)
    cache = IndexCache(tmp_path)
    assert _get(cache, items[1:], labels[1:], build_if_ahead=False) is None
    index, got = _get(cache, items[1:], labels[1:])
    assert cache.builds == 1 and len(index) == 399
    np.testing.assert_array_equal(got, labels[1:])


def test_old_entries_are_pruned(tmp_path: Path) -> None:
    items, labels, _ = _data(items=150)
    cache = IndexCache(tmp_path, keep=2)
    for key in ("v1-a", "v2-b", "v3-c"):
        cache.get_or_build(key, items, labels, lambda: ItemIndex(items, **OPTIONS), **OPTIONS)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["v2-b.json", "v3-c.json"]
    assert not list(tmp_path.glob("v1-a.faiss")) and not list(tmp_path.glob(".*.tmp"))


def _slow_build(items: np.ndarray) -> ItemIndex:
    time.sleep(1.0)  # so that the processes overlap: without the lock each would build
    return ItemIndex(items, **OPTIONS)


def _worker(directory: str, out: str) -> None:
    items, labels, queries = _data(items=3000)
    cache = IndexCache(directory)
    index, got = cache.get_or_build("v1-test", items, labels, lambda: _slow_build(items),
                                    **OPTIONS)
    ids, _ = _answers(index, got, queries)
    Path(out).write_text(json.dumps({"builds": cache.builds, "ids": ids}))


def test_processes_that_start_together_build_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"out{n}.json" for n in range(3)]
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "cache"), str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    results = [json.loads(o.read_text()) for o in outs]
    assert sorted(r["builds"] for r in results) == [0, 0, 1]
    assert results[0]["ids"] == results[1]["ids"] == results[2]["ids"]


def test_an_ivf_entry_gives_back_its_vectors_and_takes_moved_rows(tmp_path: Path) -> None:
    items, labels, queries = _data()
    options = {"exact_threshold": 100, "ivf_threshold": 100}
    IndexCache(tmp_path).get_or_build("v1-test", items, labels,
                                      lambda: ItemIndex(items, **options), **options)
    entry = IndexCache(tmp_path).load("v1-test")
    assert entry is not None and entry.built.kind == "ivf"
    np.testing.assert_allclose(entry.built.vectors(), items, rtol=1e-6, atol=1e-6)
    moved = items.copy()
    moved[3] = 10 * queries[0]  # now the best answer to queries[0]
    index, _ = IndexCache(tmp_path).get_or_build("v1-test", moved, labels, lambda: 1 / 0,
                                                 **options)
    assert index.fresh_share == pytest.approx(1 / len(items))
    assert index.search(queries[:1], 1)[1][0, 0] == 3
