"""The report's headline: every entry's ratio to the best trending baseline, with a paired
bootstrap interval of the per-user difference, so no model is said to win against a weak
baseline or by noise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from evaluation.bootstrap import paired_difference


def headline(
    results: Mapping[str, Mapping[str, object]],
    per_user: Mapping[str, Mapping[str, np.ndarray]],
    baselines: Sequence[str],
    metric: str = "recall@20",
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, object]:
    """Ratio of each entry's ``metric`` to the best baseline's, and the paired difference.

    Args:
        results: name -> metrics (``metric`` among them), baselines included.
        per_user: name -> per-user metric arrays, all in the same user order.
        baselines: the names in ``results`` that are baselines.
        metric: the headline metric. (default: ``"recall@20"``)
        n_boot, level, seed: the paired bootstrap over users.

    Returns:
        ``{"metric", "best_baseline", "best_baseline_value", "ci_level", "entries":
        {name: {"value", "ratio", "difference", "difference_ci": [lo, hi],
        "baseline": bool}}}``; ``ratio`` is None when the best baseline scores 0.

    >>> res = {"pop": {"recall@1": 0.5}, "m": {"recall@1": 0.75}}
    >>> pu = {"pop": {"recall@1": np.r_[1.0, 0, 1, 0]}, "m": {"recall@1": np.r_[1.0, 1, 1, 0]}}
    >>> h = headline(res, pu, ["pop"], "recall@1", n_boot=50)
    >>> h["best_baseline"], h["entries"]["m"]["ratio"], h["entries"]["m"]["difference"]
    ('pop', 1.5, 0.25)
    """
    if not baselines:
        raise ValueError("the headline needs at least one baseline")
    best = max(baselines, key=lambda name: (float(results[name][metric]),  # type: ignore[arg-type]
                                            -list(baselines).index(name)))
    best_value = float(results[best][metric])  # type: ignore[arg-type]
    entries: dict[str, dict[str, object]] = {}
    for name, values in results.items():
        value = float(values[metric])  # type: ignore[arg-type]
        diff, lo, hi = paired_difference(per_user[name][metric], per_user[best][metric],
                                         n_boot=n_boot, level=level, seed=seed)
        entries[name] = {"value": value, "ratio": value / best_value if best_value > 0 else None,
                         "difference": diff, "difference_ci": [lo, hi],
                         "baseline": name in baselines}
    return {"metric": metric, "best_baseline": best, "best_baseline_value": best_value,
            "ci_level": level, "entries": entries}
