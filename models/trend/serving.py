"""Top-K of the trend-aware ranker for one user in about a millisecond at 100k items:
exact scores over a candidate set (the top trending items, what the user's recent items
lead to, and the base's nearest items) instead of the whole catalogue."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np

from models.trend.scoring import COVIS_EPS, TrendParams, trend_scores
from models.trend.state import TrendState


class TrendTopK:
    """Serves :class:`~models.trend.TrendRanker` rankings from its state and parameters.

    Call :meth:`refresh` after the state changed (it recomputes the trend term, ``O(I)``);
    :meth:`top_k` then costs ``O(candidates)``.

    Args:
        state: the ranker's state (shared, not copied).
        params: the fitted parameters.
        item_vectors: the base's item embeddings ``[I, d]`` when the score has an embedding
            term. (default: ``None``)
        trend_candidates: how many of the top trending items (beyond ``k`` and the user's
            excluded items) are candidates. (default: ``200``)
        content_candidates: with content terms, the top this many trending items are
            candidates for a user with events (content can lift an item past the trending
            ones). (default: ``2000``)

    Without an embedding term the result equals exact scoring over every item, and with
    content terms too when the catalogue has at most ``content_candidates`` items: an item
    outside the candidates has the floor co-visitation score, so it cannot pass the
    trending candidates (tested against :meth:`TrendRanker.score`).
    """

    def __init__(self, state: TrendState, params: TrendParams, *,
                 item_vectors: np.ndarray | None = None, trend_candidates: int = 200,
                 content_candidates: int = 2000) -> None:
        self.state, self.params = state, params
        self.item_vectors = item_vectors
        self.trend_candidates, self.content_candidates = trend_candidates, content_candidates
        self.refresh()

    def refresh(self, t: float | None = None) -> None:
        """Recompute the trend term at ``t`` (default: the newest applied event)."""
        when = self.state.last_ts if t is None else t
        self.when = when
        self.trend = trend_scores(self.state, self.params, when)
        self.order = np.lexsort((np.arange(len(self.trend)), -self.trend))
        self._inv = 1.0 / np.sqrt(self.state.counts + 1.0)
        if self.item_vectors is not None and self.params.embedding_weight:
            v = self.item_vectors.astype(np.float64)
            self._mean = v.mean(axis=0)
            self._cov = np.cov(v, rowvar=False, bias=True).reshape(v.shape[1], v.shape[1])

    def top_k(self, user: int, k: int, *, exclude: Sequence[int] | np.ndarray = (),
              user_vector: np.ndarray | None = None,
              extra_candidates: Sequence[int] | np.ndarray = ()) -> tuple[np.ndarray,
                                                                          np.ndarray]:
        """``(items, scores)``, best first, at most ``k`` of them, never an excluded item.

        ``user_vector`` (the base's row for the user, if it has one) enables the embedding
        term; ``extra_candidates`` adds items, e.g. the ANN's nearest ones to that vector.
        """
        excluded = np.unique(np.asarray(exclude, dtype=np.int64))
        n_trend = k + len(excluded) + self.trend_candidates
        affinity = self.state.affinity
        with_content = bool(affinity is not None and self.state.has_history(user)
                            and (self.params.tag_weight or self.params.age_weight))
        if with_content:
            n_trend = max(n_trend, self.content_candidates + len(excluded))
        recent = self.state.recent_items(user)[: self.params.n_query_items]
        neighbours, covis_values = self._covis(recent)
        candidates = np.unique(np.concatenate([
            self.order[:n_trend], neighbours, np.asarray(extra_candidates, dtype=np.int64)]))
        candidates = candidates[(candidates < len(self.trend))
                                & ~np.isin(candidates, excluded)]
        scores = self.trend[candidates].copy()
        if self.params.covis_weight and len(recent):
            covis = np.full(len(candidates), np.log(COVIS_EPS))
            if len(neighbours):
                top = covis_values.max()
                where = np.searchsorted(neighbours, candidates)
                hit = (where < len(neighbours)) & (
                    neighbours[np.minimum(where, len(neighbours) - 1)] == candidates)
                covis[hit] = np.log(covis_values[where[hit]] / top + COVIS_EPS)
            scores += self.params.covis_weight * covis
        if with_content:
            assert affinity is not None
            tags, ages = affinity.item_terms(np.asarray([user]), candidates, self.when)
            scores += self.params.tag_weight * tags[0] + self.params.age_weight * ages[0]
        if (self.params.embedding_weight and user_vector is not None
                and self.item_vectors is not None):
            u = np.asarray(user_vector, dtype=np.float64)
            mean = float(u @ self._mean)
            std = float(np.sqrt(max(u @ self._cov @ u, 0.0)))
            known = candidates < len(self.item_vectors)
            dots = np.zeros(len(candidates))
            dots[known] = self.item_vectors[candidates[known]] @ u
            scores += self.params.embedding_weight * np.where(
                known, (dots - mean) / (std if std > 0 else 1.0), 0.0)
        best = np.lexsort((candidates, -scores))[:k]
        return candidates[best], scores[best]

    def _covis(self, recent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted item indices the recent items lead to, and their weights ``v``."""
        if not len(recent) or not self.params.covis_weight:
            return np.empty(0, np.int64), np.empty(0)
        t = self.state.transitions
        weights = self.params.recency ** np.arange(len(recent)) * self._inv[recent]
        rows = t[recent]
        v = np.asarray(rows.T @ weights).ravel()  # [I], dense: transitions rows are short
        hit = np.flatnonzero(v > 0)
        return hit.astype(np.int64), v[hit] * self._inv[hit]


def to_bytes(state: TrendState, params: TrendParams) -> bytes:
    """What a version publishes for serving: the parameters and the state (``.npz``)."""
    buffer = io.BytesIO()
    np.savez(buffer, params=np.frombuffer(json.dumps(params.as_dict()).encode(), np.uint8),
             state=np.frombuffer(state.to_bytes(), np.uint8))
    return buffer.getvalue()


def from_bytes(data: bytes) -> tuple[TrendState, TrendParams]:
    """Inverse of :func:`to_bytes`."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        params = TrendParams.from_dict(json.loads(z["params"].tobytes().decode()))
        state = TrendState.from_bytes(z["state"].tobytes())
    return state, params
