"""ItemIndex: FAISS flat and numpy agree exactly, HNSW and IVF recall, exclusions always hold."""

from __future__ import annotations

import numpy as np
import pytest

import store.ann as ann
from store.ann import IVF_REFINE_FACTOR, ItemIndex


def _data(items: int = 2000, queries: int = 40, dim: int = 16, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((items, dim)).astype(np.float32),
        rng.standard_normal((queries, dim)).astype(np.float32),
    )


def _indexes(items: np.ndarray) -> dict[str, ItemIndex]:
    return {
        "numpy": ItemIndex(items, backend="numpy"),
        "flat": ItemIndex(items),
        "hnsw": ItemIndex(items, exact_threshold=100),
        "ivf": ItemIndex(items, exact_threshold=100, ivf_threshold=100, ivf_max_scan=10**9),
    }


@pytest.mark.parametrize("k", [1, 10, 50])
def test_flat_equals_numpy_and_hnsw_and_ivf_recall(k: int) -> None:
    items, queries = _data()
    idx = _indexes(items)
    assert [idx[n].kind for n in idx] == list(idx)
    ref_scores, ref_ids = idx["numpy"].search(queries, k)
    brute = queries @ items.T
    np.testing.assert_array_equal(ref_ids, np.argsort(-brute, axis=1, kind="stable")[:, :k])
    flat_scores, flat_ids = idx["flat"].search(queries, k)
    np.testing.assert_array_equal(flat_ids, ref_ids)
    np.testing.assert_allclose(flat_scores, ref_scores, rtol=1e-5, atol=1e-5)
    for name in ("hnsw", "ivf"):
        _, found = idx[name].search(queries, k)
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, ref_ids, strict=True)])
        assert recall >= 0.9, name


@pytest.mark.parametrize("name", ["numpy", "flat", "hnsw", "ivf"])
def test_exclusions_are_never_returned(name: str) -> None:
    items, queries = _data(items=500, queries=12)
    index = _indexes(items)[name]
    index.max_overfetch = 8  # the long exclusion lists below need the exact fallback
    _, best = ItemIndex(items, backend="numpy").search(queries, 30)
    exclude = [best[r, : (r * 3) % 30] for r in range(len(queries))]  # 0..27 of the top 30
    exclude[0] = None
    scores, ids = index.search(queries, 10, exclude=exclude)
    assert ids.shape == scores.shape == (12, 10)
    for r in range(len(queries)):
        blocked = set() if exclude[r] is None else set(exclude[r].tolist())
        assert not blocked & set(ids[r].tolist())
        assert len(set(ids[r].tolist())) == 10 and (ids[r] >= 0).all()
        assert (np.diff(scores[r]) <= 1e-6).all()  # best first
    if index.exact:
        _, ref = ItemIndex(items, backend="numpy").search(queries, 10, exclude=exclude)
        np.testing.assert_array_equal(ids, ref)


@pytest.mark.parametrize("name", ["numpy", "flat", "hnsw", "ivf"])
def test_short_results_are_padded(name: str) -> None:
    items, queries = _data(items=120, queries=2)
    index = _indexes(items)[name]
    keep = np.array([5, 7])
    everything_else = np.setdiff1d(np.arange(120), keep)
    scores, ids = index.search(queries, 4, exclude=[everything_else, np.arange(3)])
    assert sorted(ids[0, :2].tolist()) == [5, 7] and ids[0, 2:].tolist() == [-1, -1]
    assert np.isneginf(scores[0, 2:]).all() and (ids[1] >= 3).all()


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_ties_break_by_lower_id(backend: str) -> None:
    items = np.ones((50, 4), np.float32)
    items[30] = 2.0  # the one clear winner
    index = ItemIndex(items, backend=backend)
    scores, ids = index.search(np.ones((25, 4), np.float32), 4, exclude=[np.array([1])] * 25)
    assert ids.tolist() == [[30, 0, 2, 3]] * 25
    assert scores[0].tolist() == [8.0, 4.0, 4.0, 4.0]


def test_numpy_fallback_without_faiss_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ann, "_import_faiss", lambda: None)
    items, queries = _data(items=30, queries=3, dim=5)
    index = ItemIndex(items)
    assert repr(index) == "ItemIndex(backend='numpy', kind='numpy', size=30, dim=5)"
    with pytest.raises(ValueError, match=r"queries must be \[B, 5\]"):
        index.search(queries[:, :4], 3)
    with pytest.raises(ValueError, match="k must be"):
        index.search(queries, 0)
    with pytest.raises(ValueError, match="exclude has 1 entries for 3 queries"):
        index.search(queries, 3, exclude=[np.array([1])])
    with pytest.raises(ValueError, match="backend"):
        ItemIndex(items, backend="annoy")
    empty = ItemIndex(np.zeros((0, 5), np.float32))
    assert empty.search(queries, 2)[1].tolist() == [[-1, -1]] * 3


@pytest.mark.parametrize("name", ["numpy", "flat", "hnsw", "ivf"])
@pytest.mark.parametrize("moved", [5, 300])
def test_updated_index_answers_like_a_rebuilt_one(name: str, moved: int) -> None:
    items, queries = _data()
    rng = np.random.default_rng(1)
    # move some items far (so stale scores would be wrong) and append 7 new ones
    ids = np.concatenate([rng.choice(len(items), moved, replace=False),
                          np.arange(len(items), len(items) + 7)])
    vectors = 3 * rng.standard_normal((len(ids), items.shape[1])).astype(np.float32)
    current = np.concatenate([items, np.zeros((7, items.shape[1]), np.float32)])
    current[ids] = vectors
    old = _indexes(items)[name]
    new = old.updated(ids, vectors)
    assert len(new) == len(current) and len(old) == len(items)  # the original is untouched
    assert new.fresh_share == pytest.approx(len(ids) / len(current))
    exclude = [rng.choice(len(current), 30, replace=False) for _ in queries]
    exclude[0] = ids[:3]  # excluded updated items stay excluded
    got_scores, got_ids = new.search(queries, 10, exclude=exclude)
    ref_scores, ref_ids = ItemIndex(current, backend="numpy").search(queries, 10, exclude=exclude)
    if name in ("hnsw", "ivf"):
        recall = np.mean([len(set(a) & set(b)) / 10
                          for a, b in zip(got_ids, ref_ids, strict=True)])
        assert recall >= 0.95
        # every updated item that belongs in a top-10 is found: they are scored exactly
        for row, ref in enumerate(ref_ids):
            assert set(ref) & set(ids) <= set(got_ids[row])
    else:
        np.testing.assert_array_equal(got_ids, ref_ids)
        np.testing.assert_allclose(got_scores, ref_scores, rtol=1e-5, atol=1e-5)
    for row, ex in enumerate(exclude):
        assert not set(got_ids[row]) & set(ex.tolist())
    # updates compose: a second update of the same items wins
    newer = new.updated(ids[:2], -vectors[:2])
    assert (newer.items[ids[:2]] == -vectors[:2]).all()
    assert (new.items[ids[:2]] == vectors[:2]).all()


def test_updated_validates() -> None:
    index = ItemIndex(np.eye(4, dtype=np.float32), backend="numpy")
    with pytest.raises(ValueError, match="without gaps"):
        index.updated(np.array([6]), np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        index.updated(np.array([1]), np.ones((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        index.updated(np.array([1]), np.full((1, 4), np.nan))


def _popular_norms(items: int = 3000, dim: int = 16, seed: int = 0):  # type: ignore[no-untyped-def]
    """Vectors shaped like trained embeddings: a few topics, norms growing with a Zipf
    popularity (LightGCN's item norm grows like the square root of its degree)."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((8, dim))
    directions = topics[rng.integers(0, 8, items)] + 0.5 * rng.standard_normal((items, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    degree = 1.0 / np.arange(1, items + 1) ** 1.1 * items
    vectors = directions * np.sqrt(rng.permutation(degree))[:, None]
    users = topics[rng.integers(0, 8, 300)] + 0.5 * rng.standard_normal((300, dim))
    return vectors.astype(np.float32), users.astype(np.float32)


def test_ivf_searches_the_fewest_lists_that_reach_the_recall_target() -> None:
    faiss = pytest.importorskip("faiss")
    items, queries = _data(items=3000)
    index = ItemIndex(items, exact_threshold=1000, ivf_threshold=1000, ivf_recall=0.9,
                      ivf_max_scan=10**9, probe_queries=queries)
    assert index.kind == "ivf" and index.space == "l2" and not index.exact
    ivf = faiss.extract_index_ivf(index._index)
    assert ivf.nlist == round(np.sqrt(3000)) and index._index.k_factor == IVF_REFINE_FACTOR
    tried = [int(p) for p in index.probe_recalls]
    assert tried == sorted(tried) and tried[-1] == index.nprobe
    recalls = list(index.probe_recalls.values())
    assert all(r < 0.9 for r in recalls[:-1]) and recalls[-1] >= 0.9
    assert index.build_recall == recalls[-1]
    # searching every list and re-ranking every code exactly finds what the exact search finds
    ivf.nprobe, index._index.k_factor = ivf.nlist, 300
    _, got = index.search(queries, 10)
    _, want = ItemIndex(items, backend="numpy").search(queries, 10)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="ivf_recall"):
        ItemIndex(items, ivf_recall=0.0)
    with pytest.raises(ValueError, match="ivf_max_scan"):
        ItemIndex(items, ivf_max_scan=0)
    # exact_threshold still forces the exact flat index, whatever ivf_threshold says
    assert ItemIndex(items, exact_threshold=10**9, ivf_threshold=1000).kind == "flat"


def test_ivf_breadth_stops_at_its_scan_bound(caplog: pytest.LogCaptureFixture) -> None:
    items, queries = _data(items=3000)  # Gaussian: no clusters, so the target is out of reach
    index = ItemIndex(items, exact_threshold=1000, ivf_threshold=1000, ivf_recall=1.0,
                      ivf_max_scan=600, probe_queries=queries)
    # 55 lists of 3000 / 55 vectors on average: 600 vectors is ceil(11.0) lists
    assert index.nprobe == 11 == max(int(p) for p in index.probe_recalls)
    assert index.build_recall < 1.0 and "short of ivf_recall" in caplog.text


def test_hnsw_in_the_l2_space_answers_inner_products() -> None:
    items, users = _popular_norms()
    index = ItemIndex(items, exact_threshold=100, probe_queries=users[:100], hnsw_space="l2")
    assert index.kind == "hnsw" and index.space == "l2" and list(index.probe_recalls) == ["l2"]
    assert index.build_recall is not None and index.build_recall >= 0.95
    assert "space='l2'" in repr(index)
    queries = users[100:]  # not the probes
    scores, ids = index.search(queries, 10)
    _, exact = ItemIndex(items, backend="numpy").search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact, strict=True)])
    assert recall >= 0.95
    # scores are inner products of the returned items, best first, as with every kind
    np.testing.assert_allclose(scores, np.einsum("bkd,bd->bk", items[ids], queries), rtol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_hnsw_keeps_the_space_that_recalls_more() -> None:
    items, queries = _data(items=3000, dim=64)
    index = ItemIndex(items, exact_threshold=100, probe_queries=queries)
    assert set(index.probe_recalls) == {"ip", "l2"}
    assert index.space == max(index.probe_recalls, key=index.probe_recalls.__getitem__)
    assert index.build_recall == index.probe_recalls[index.space]
    # the kept index is the one measured: the same probes find the same share again
    _, found = index.search(queries, ann.PROBE_K)
    _, exact = ItemIndex(items, backend="numpy").search(queries, ann.PROBE_K)
    recall = np.mean([len(set(a) & set(b)) / ann.PROBE_K for a, b in zip(found, exact,
                                                                        strict=True)])
    assert recall == pytest.approx(index.build_recall)
    with pytest.raises(ValueError, match="probe_queries"):
        ItemIndex(items, exact_threshold=100, probe_queries=queries[:, :3])
    with pytest.raises(ValueError, match="hnsw_space"):
        ItemIndex(items, hnsw_space="cosine")


class _GpuLimited:
    """A FAISS index that rejects searches beyond ``limit`` results per query, as FAISS on a
    GPU does beyond k = 2048 (``GPU_MAX_SELECTION_K``); records the k it was asked for."""

    def __init__(self, index, limit: int) -> None:  # type: ignore[no-untyped-def]
        self.index, self.limit, self.asked = index, limit, []

    def search(self, q, k, **kwargs):  # type: ignore[no-untyped-def]
        self.asked.append(k)
        if k > self.limit:
            raise RuntimeError(f"Error: 'k <= GPU_MAX_SELECTION_K' failed: k={k}")
        return self.index.search(q, k, **kwargs)


@pytest.mark.parametrize("k", [5, 63, 64, 100])
@pytest.mark.parametrize("fresh", [False, True])
def test_fetch_is_capped_at_the_gpu_limit(k: int, fresh: bool) -> None:
    """Exclusions and fresh items make the index over-fetch up to k + 1 + 2048; with a
    (fake, 64) GPU limit every search stays within it and the answers stay exact."""
    pytest.importorskip("faiss")
    items, queries = _data(items=500, queries=12)
    rng = np.random.default_rng(3)
    index = ItemIndex(items, max_fetch=64)
    assert index.kind == "flat"
    limited = _GpuLimited(index._index, 64)
    index._index = limited
    current = items
    if fresh:
        moved = rng.choice(len(items), 40, replace=False)
        vectors = 3 * rng.standard_normal((40, items.shape[1])).astype(np.float32)
        index = index.updated(moved, vectors)
        current = index.items
    exclude = [rng.choice(len(items), int(n), replace=False) for n in rng.integers(0, 120, 12)]
    got_scores, got_ids = index.search(queries, k, exclude=exclude)
    ref_scores, ref_ids = ItemIndex(current, backend="numpy").search(queries, k, exclude=exclude)
    np.testing.assert_array_equal(got_ids, ref_ids)
    np.testing.assert_allclose(got_scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert all(asked <= 64 for asked in limited.asked)


def test_max_fetch_defaults_to_the_gpu_limit_only_on_a_gpu() -> None:
    pytest.importorskip("faiss")
    items, _ = _data(items=50)
    assert ItemIndex(items).max_fetch is None  # a CPU flat index has no limit
    assert ann.GPU_MAX_K == 2048
    with pytest.raises(ValueError, match="max_fetch"):
        ItemIndex(items, max_fetch=1)


def test_search_on_calling_threads_leaves_faiss_one_openmp_thread() -> None:
    faiss = pytest.importorskip("faiss")
    ann.search_on_calling_threads()  # tests/conftest.py gives the threads back afterwards
    assert faiss.omp_get_max_threads() == 1
