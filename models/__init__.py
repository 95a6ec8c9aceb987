"""Recommender models: tensors and arrays in, tensors and arrays out; no SQL, Kafka or files."""

from __future__ import annotations

from models.base import InteractionGraph, Recommender, resolve_device
from models.bpr import BPRRecommender
from models.incremental_updater import IncrementalUpdater, UpdateResult
from models.lightgcn import LightGCN, LightGCNEncoder
from models.live_update import LiveUpdateHistory, train_live_update
from models.mf import MFBPR, MFEncoder
from models.negatives import (
    InBatchNegativeSampler,
    NegativeSampler,
    PopularityNegativeSampler,
    UniformNegativeSampler,
    make_negative_sampler,
)
from models.neighbour_buffer import NeighbourBuffer
from models.pinsage import PinSage, PinSageConv, PinSageEncoder
from models.popularity import Popularity
from models.random_walks import ItemWalker
from models.trend import TrendRanker, TrendState
from models.updater import TemporalUpdater

MODELS: dict[str, type[Recommender]] = {
    "lightgcn": LightGCN,
    "pinsage": PinSage,
    "mf": MFBPR,
    "popularity": Popularity,
    "trend": TrendRanker,
}


def make_model(name: str, **kwargs: object) -> Recommender:
    """A recommender by name (``"lightgcn"``, ``"pinsage"``, ``"mf"``, ``"popularity"``),
    built with ``kwargs`` as its constructor's keyword arguments.

    >>> make_model("popularity", window_seconds=86400.0)
    Popularity(window_seconds=86400.0, weighted=False)
    """
    try:
        cls = MODELS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose one of {sorted(MODELS)}"
        ) from None
    try:
        return cls(**kwargs)  # type: ignore[arg-type]
    except TypeError as error:
        raise TypeError(f"bad arguments for model {name!r}: {error}") from error


def model_arguments(name: str) -> tuple[str, ...]:
    """The keyword arguments ``make_model(name, ...)`` accepts, e.g. for a CLI that passes
    ``--epochs``/``--dim`` only to the models that take them.

    >>> "epochs" in model_arguments("lightgcn"), "epochs" in model_arguments("popularity")
    (True, False)
    """
    if name.lower() not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    cls = MODELS[name.lower()]
    extra = {PinSage: ("item_features",), TrendRanker: ("content",)}.get(cls, ())
    return (*cls._param_names, *extra)


__all__ = [
    "MFBPR",
    "MODELS",
    "BPRRecommender",
    "InBatchNegativeSampler",
    "IncrementalUpdater",
    "LiveUpdateHistory",
    "NeighbourBuffer",
    "TemporalUpdater",
    "UpdateResult",
    "train_live_update",
    "InteractionGraph",
    "ItemWalker",
    "LightGCN",
    "LightGCNEncoder",
    "MFEncoder",
    "NegativeSampler",
    "Popularity",
    "PopularityNegativeSampler",
    "PinSage",
    "PinSageConv",
    "PinSageEncoder",
    "Recommender",
    "UniformNegativeSampler",
    "make_model",
    "model_arguments",
    "make_negative_sampler",
    "resolve_device",
    "TrendRanker",
    "TrendState",
]
