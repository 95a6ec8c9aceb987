"""The trend-aware ranker's score, as a pure function of its parameters and state.

``score(u, i) = trend(i) + covis_weight * covis(u, i) + embedding_weight * z(u, i)`` with

* ``trend(i) = (1 - long_weight) * log(c_short(i) + s) + long_weight * log(c_long(i) + s)``,
  ``c_h`` the decayed counts at the query time (``long_half_life=inf``: all-time counts) and
  ``s`` the smoothing count;
* ``covis(u, i) = log(v(i) / max_j v(j) + eps)``, where
  ``v(i) = sum_r recency ** r * T[j_r, i] / sqrt((n_{j_r} + 1) * (n_i + 1))`` over the user's
  most recent items ``j_0`` (newest), ``j_1``, ...; ``T`` the transition counts and ``n`` the
  all-time counts; ``covis = 0`` for a user without recent items;
* ``z(u, i)``: the base embeddings' inner product standardised over the user's items
  (mean 0, standard deviation 1); 0 for a user the base does not know;
* with item content, ``+ tag_weight * tags(u, i) + age_weight * age(u, i)``: the user's
  tag and release-age affinities (:mod:`models.trend.content`), 0 without content.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from models.trend.state import TrendState

DAY = 86_400.0
#: floor of the normalised co-visitation, so items no recent item leads to are not -inf
COVIS_EPS = 1e-3


@dataclass(frozen=True)
class TrendParams:
    """The ranker's fitted parameters (half-lives in **seconds**).

    >>> TrendParams(DAY, 30 * DAY, 0.15, 0.1).as_dict()["long_half_life_days"]
    30.0
    """

    short_half_life: float
    long_half_life: float
    long_weight: float
    covis_weight: float
    embedding_weight: float = 0.0
    tag_weight: float = 0.0
    age_weight: float = 0.0
    smoothing: float = 0.1
    recency: float = 0.7
    n_query_items: int = 5

    def as_dict(self) -> dict[str, float]:
        """JSON-ready, with the half-lives also in days (``inf`` as ``None``)."""
        out: dict[str, float] = {k: v for k, v in asdict(self).items()
                                 if not (isinstance(v, float) and math.isinf(v))}
        out["short_half_life_days"] = self.short_half_life / DAY
        out["long_half_life_days"] = (None if math.isinf(self.long_half_life)  # type: ignore
                                      else self.long_half_life / DAY)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TrendParams:
        """Inverse of :meth:`as_dict`."""
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "long_half_life" not in fields:
            fields["long_half_life"] = math.inf
        return cls(**fields)  # type: ignore[arg-type]


def trend_scores(state: TrendState, params: TrendParams, t: float) -> np.ndarray:
    """float64 ``[num_items]``: the trend term at time ``t`` (epoch seconds)."""
    short = _counts(state, params.short_half_life, t)
    out = (1.0 - params.long_weight) * np.log(short + params.smoothing)
    if params.long_weight:
        long = _counts(state, params.long_half_life, t)
        out += params.long_weight * np.log(long + params.smoothing)
    return out


def covis_scores(state: TrendState, params: TrendParams, users: np.ndarray) -> np.ndarray:
    """float64 ``[len(users), num_items]``: the co-visitation term (0 rows for users
    without recent items)."""
    n = state.num_items
    rows, cols, vals = [], [], []
    for r, user in enumerate(np.asarray(users).tolist()):
        recent = state.recent_items(user)[: params.n_query_items]
        rows += [r] * len(recent)
        cols += recent.tolist()
        vals += (params.recency ** np.arange(len(recent))).tolist()
    query = sp.csr_matrix((vals, (rows, cols)), shape=(len(users), n))
    inv = 1.0 / np.sqrt(state.counts + 1.0)
    v = np.asarray((query @ sp.diags(inv) @ state.transitions).todense()) * inv
    top = v.max(axis=1, keepdims=True)
    has = (np.diff(query.indptr) > 0)[:, None]
    return np.where(has, np.log(v / np.where(top > 0, top, 1.0) + COVIS_EPS), 0.0)


def content_scores(state: TrendState, params: TrendParams, users: np.ndarray, t: float
                   ) -> np.ndarray:
    """float64 ``[len(users), num_items]``: the content terms at time ``t`` (zeros when the
    state has no content or both weights are 0)."""
    out = np.zeros((len(users), state.num_items))
    if state.affinity is None or not (params.tag_weight or params.age_weight):
        return out
    tags, ages = state.affinity.item_terms(users, np.arange(state.num_items), t)
    return params.tag_weight * tags + params.age_weight * ages


def standardised(dots: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its standard deviation (rows of zeros stay 0)."""
    mean = dots.mean(axis=1, keepdims=True)
    std = dots.std(axis=1, keepdims=True)
    return (dots - mean) / np.where(std > 0, std, 1.0)


def _counts(state: TrendState, half_life: float, t: float) -> np.ndarray:
    return state.counts if math.isinf(half_life) else state.decayed_one(half_life, t)
