"""Percentile bootstrap confidence intervals for means over users.

Users are resampled with replacement; with the same ``seed`` and the same number of users
every model sees the same resamples (a paired bootstrap), and the work is done in chunks of
resamples so memory stays bounded for any number of users.
"""

from __future__ import annotations

import numpy as np

#: upper bound on the resample-count matrix held at once (elements)
_CHUNK_ELEMENTS = 1 << 23


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> np.ndarray:
    """Confidence intervals for the column means of ``values``.

    Args:
        values: float ``[U, M]`` (or ``[U]``) per-user values; NaN marks "undefined for this
            user" and is left out of the mean, as in ``np.nanmean``.
        n_boot: number of resamples of the ``U`` users. (default: ``1000``)
        level: coverage of the interval. (default: ``0.95``)
        seed: seed of the resampling generator. (default: ``0``)

    Returns:
        float64 ``[M, 2]`` (or ``[2]``) lower and upper bounds; NaN where undefined.

    >>> lo, hi = bootstrap_ci(np.r_[np.zeros(50), np.ones(50)], seed=1)
    >>> bool(0.35 < lo < 0.5 < hi < 0.65)
    True
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    values = np.asarray(values, dtype=np.float64)
    flat = values.ndim == 1
    v = values.reshape(len(values), -1)
    n_users, n_metrics = v.shape
    if n_users == 0:
        out = np.full((n_metrics, 2), np.nan)
        return out[0] if flat else out
    defined = ~np.isnan(v)
    filled = np.where(defined, v, 0.0)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n_users)
    means = np.empty((n_boot, n_metrics))
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        draws = rng.integers(0, n_users, size=(size, n_users))
        offsets = (np.arange(size) * n_users)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=size * n_users)
        counts = counts.reshape(size, n_users).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[start:start + size] = (counts @ filled) / (counts @ defined)
    alpha = (1.0 - level) / 2.0
    out = np.full((n_metrics, 2), np.nan)
    for m in range(n_metrics):
        col = means[:, m][~np.isnan(means[:, m])]
        if len(col):
            out[m] = np.quantile(col, [alpha, 1.0 - alpha])
    return out[0] if flat else out


def paired_difference(
    a: np.ndarray, b: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean per-user difference ``a - b`` and its bootstrap interval (users resampled).

    Args:
        a, b: float ``[U]`` per-user values of two models on the same users, same order.
        n_boot, level, seed: see :func:`bootstrap_ci`.

    Returns:
        ``(mean, lower, upper)``; an interval above zero says ``a`` beats ``b``.

    >>> mean, lo, hi = paired_difference(np.r_[np.ones(60), np.zeros(40)], np.zeros(100))
    >>> round(mean, 2), bool(0 < lo < mean < hi)
    (0.6, True)
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same users: shapes {a.shape} != {b.shape}")
    diff = a - b
    lo, hi = bootstrap_ci(diff, n_boot=n_boot, level=level, seed=seed)
    defined = diff[~np.isnan(diff)]
    return (float(defined.mean()) if len(defined) else float("nan")), float(lo), float(hi)
