"""Global temporal split of an interaction graph into train, validation and test periods.

Train holds the events with ``ts < t1``, validation ``t1 <= ts < t2`` and test ``ts >= t2``.
The boundaries come from fractions of the events (ordered by time) or from explicit times;
the split is never random, so no future event can leak into training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

import numpy as np

from models.base import InteractionGraph

FitOn = Literal["train", "train+valid"]


def iso(t: float) -> str:
    """Epoch seconds as an ISO-8601 UTC string.

    >>> iso(0.0)
    '1970-01-01T00:00:00Z'
    """
    return datetime.fromtimestamp(float(t), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class TemporalSplit:
    """The three periods of a global temporal split and their boundaries.

    Args:
        train: events with ``ts < t1``.
        valid: events with ``t1 <= ts < t2``.
        test: events with ``ts >= t2``.
        t1: start of validation, epoch seconds.
        t2: start of test, epoch seconds.
        start: time of the first event, epoch seconds.
        end: time of the last event, epoch seconds.

    >>> g = InteractionGraph.from_arrays([0, 0, 1, 1], [0, 1, 0, 1], [1.0, 2.0, 3.0, 4.0])
    >>> s = temporal_split(g, t1=2.0, t2=3.0)
    >>> s.train.num_edges, s.valid.num_edges, s.test.num_edges
    (1, 1, 2)
    >>> s.history("train+valid").num_edges
    2
    """

    train: InteractionGraph
    valid: InteractionGraph
    test: InteractionGraph
    t1: float
    t2: float
    start: float
    end: float

    def history(self, fit_on: FitOn = "train") -> InteractionGraph:
        """The events a model is trained on: ``"train"`` or ``"train+valid"`` (before ``t2``).

        Evaluation masks exactly these events, so pass the same ``fit_on`` to both.
        """
        if fit_on == "train":
            return self.train
        if fit_on == "train+valid":
            return self.train.concat(self.valid)
        raise ValueError(f"fit_on must be 'train' or 'train+valid', got {fit_on!r}")

    def summary(self) -> dict[str, object]:
        """JSON-ready description: boundaries (epoch seconds and ISO dates) and sizes."""
        out: dict[str, object] = {
            "kind": "global temporal",
            "start": self.start,
            "t1": self.t1,
            "t2": self.t2,
            "end": self.end,
            "start_iso": iso(self.start),
            "t1_iso": iso(self.t1),
            "t2_iso": iso(self.t2),
            "end_iso": iso(self.end),
            "num_users": self.train.num_users,
            "num_items": self.train.num_items,
        }
        for name, part in (("train", self.train), ("valid", self.valid), ("test", self.test)):
            out[f"{name}_events"] = part.num_edges
            out[f"{name}_users"] = int(np.unique(part.user).size)
            out[f"{name}_items"] = int(np.unique(part.item).size)
        return out


def temporal_split(
    graph: InteractionGraph,
    *,
    train_frac: float = 0.8,
    valid_frac: float = 0.1,
    t1: float | None = None,
    t2: float | None = None,
) -> TemporalSplit:
    """Split ``graph`` at two times into train ``[.., t1)``, validation ``[t1, t2)``, test.

    Args:
        graph: the whole interaction stream; ``ts`` in epoch seconds.
        train_frac: share of events (in time order) before ``t1``; used when ``t1`` is None.
            With ties at the boundary, every event at the boundary time goes to the later
            period, so the share can be slightly smaller. (default: ``0.8``)
        valid_frac: share of events in ``[t1, t2)``; used when ``t2`` is None.
            (default: ``0.1``; test gets the rest)
        t1: explicit start of validation in epoch seconds. (default: from ``train_frac``)
        t2: explicit start of test in epoch seconds. (default: from ``valid_frac``)

    Raises:
        ValueError: on an empty graph, missing timestamps (all events at one time),
            non-finite times, bad fractions, ``t1 >= t2``, or any empty period.

    >>> g = InteractionGraph.from_arrays(range(10), range(10), range(10))
    >>> s = temporal_split(g)
    >>> s.t1, s.t2, s.train.num_edges, s.valid.num_edges, s.test.num_edges
    (8.0, 9.0, 8, 1, 1)
    """
    if graph.num_edges == 0:
        raise ValueError("cannot split an empty graph: it has no interactions")
    ts = np.asarray(graph.ts, dtype=np.float64)
    if not np.isfinite(ts).all():
        raise ValueError("event times contain NaN or infinity; clean the data before splitting")
    start, end = float(ts.min()), float(ts.max())
    if start == end:
        raise ValueError(
            f"the data has no usable timestamps: all {graph.num_edges} events are at "
            f"t={start}; a temporal split needs real event times (epoch seconds)"
        )
    order = np.sort(ts)
    if t1 is None:
        _check_frac("train_frac", train_frac)
        t1 = float(order[min(math.floor(train_frac * len(order)), len(order) - 1)])
    if t2 is None:
        _check_frac("valid_frac", valid_frac)
        if train_frac + valid_frac >= 1.0:
            raise ValueError(
                f"train_frac + valid_frac = {train_frac + valid_frac} leaves no test period"
            )
        pos = math.floor((train_frac + valid_frac) * len(order))
        t2 = float(order[min(pos, len(order) - 1)])
    t1, t2 = float(t1), float(t2)
    if not t1 < t2:
        raise ValueError(
            f"need t1 < t2, got t1={t1} ({iso(t1)}), t2={t2} ({iso(t2)}); with fractions this "
            "means too many events share one time: widen valid_frac or give explicit times"
        )
    train_mask = ts < t1
    test_mask = ts >= t2
    valid_mask = ~train_mask & ~test_mask
    for name, mask in (("train", train_mask), ("validation", valid_mask), ("test", test_mask)):
        if not mask.any():
            raise ValueError(
                f"the {name} period is empty (t1={iso(t1)}, t2={iso(t2)}, data spans "
                f"{iso(start)} .. {iso(end)}); choose other fractions or boundary times"
            )
    return TemporalSplit(
        train=graph.subset(train_mask),
        valid=graph.subset(valid_mask),
        test=graph.subset(test_mask),
        t1=t1,
        t2=t2,
        start=start,
        end=end,
    )


def _check_frac(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")

