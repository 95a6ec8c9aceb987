"""Fitting every evaluated model as ``streamrec retrain`` fits it, for the temporal protocol.

Epochs are chosen on the validation period (fit on train, early stopping on validation);
with ``fit_on="train+valid"`` the model is then refitted on every event before the test
start for that epoch count, and the incremental updater is trained on the validation window
from the model fitted before it: :func:`streamrec.retrain.fit_validated`, the very code a
retrain runs, so the evaluated model is the one a retrain at ``t2`` would serve.
"""

from __future__ import annotations

import copy
import inspect
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from evaluation.split import FitOn, TemporalSplit
from models.base import Recommender

log = logging.getLogger(__name__)

#: builds an unfitted recommender from a name and keyword arguments (``seed`` among them)
ModelFactory = Callable[..., Recommender]


@dataclass
class ModelSpec:
    """How to build one evaluated model: ``make(**kwargs)`` returns it unfitted."""

    name: str
    make: Callable[..., Recommender]
    kwargs: dict[str, object]
    seeded: bool


@dataclass
class FittedModel:
    """A model fitted by the protocol, with what was chosen on validation.

    Attributes:
        model: the evaluated (served) model.
        epochs: the epoch count chosen on validation, or None when nothing was selected.
        updater_state: the incremental updater's weights, trained as a retrain trains them.
        metrics: the retrain's validation figures (``valid_recall@20``, ``best_epoch``, ...).
        fit_seconds: wall time of all fits (validation run, updater, refit).
    """

    spec: ModelSpec
    model: Recommender
    epochs: int | None
    updater_state: bytes | None
    fit_seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    def make_refit(self) -> Recommender:
        """A new unfitted model with the chosen epochs (a streaming full retrain)."""
        extra = {} if self.epochs is None else {"epochs": self.epochs}
        return self.spec.make(**{**self.spec.kwargs, **extra})

    def info(self, fit_on: str) -> dict[str, object]:
        """model_info fields: class, hyper-parameters, chosen epochs, fit time, and what a
        model that chooses its own parameters on validation chose (``fitted``, e.g. the
        trend ranker's half-lives and weights)."""
        summary = getattr(self.model, "fitted_summary", None)
        extra = summary() if callable(summary) else {}
        return {"class": type(self.model).__name__, "baseline": False, **extra,
                "hyper_parameters": self.model.hyper_parameters(),
                "seeded": self.spec.seeded, "fit_on": fit_on, "epochs": self.epochs,
                "epochs_chosen_on": "validation" if self.epochs is not None else None,
                "validation": dict(self.metrics),
                "updater": "trained" if self.updater_state is not None else None,
                "fit_seconds": self.fit_seconds}


def fit_protocol(spec: ModelSpec, split: TemporalSplit, fit_on: FitOn, *, seed: int,
                 train_updater: bool) -> FittedModel:
    """Fit ``spec`` on ``split`` as a retrain at ``split.t2`` would (see the module doc).

    ``fit_on="train"`` keeps the model fitted on train (early stopping on validation).
    """
    from models.training import has_scorable_user
    from streamrec.retrain import FitOutcome, fit_validated

    if fit_on not in ("train", "train+valid"):
        raise ValueError(f"fit_on must be 'train' or 'train+valid', got {fit_on!r}")
    started = time.perf_counter()
    if not has_scorable_user(split.train, split.valid):
        # as a retrain without a usable validation window: the model's own epochs
        log.warning("no validation user has an item unseen in train: %s is fitted without "
                    "early stopping on %s", spec.name, fit_on)
        model = spec.make(**spec.kwargs).fit(split.history(fit_on))
        outcome = FitOutcome(model, {})
    else:
        outcome = fit_validated(spec.make, spec.kwargs, split.history("train+valid"), split.train,
                                split.valid, seed=seed, progress=False,
                                train_updater=train_updater, refit=fit_on == "train+valid")
    return FittedModel(spec, outcome.model, outcome.epochs, outcome.updater_state,
                       time.perf_counter() - started, outcome.metrics)


def shared_base(spec: ModelSpec, fitted: Mapping[str, FittedModel], fit_on: FitOn
                ) -> FittedModel | None:
    """``spec`` as already fitted inside a trend ranker of ``fitted`` whose base is the same
    model (same name and keyword arguments, seed included), or None. Both fits run the
    same steps from the same seed (early stopping on validation, the updater trained from
    that model, the refit for the chosen epochs), so reusing the ranker's base gives the
    standalone row without fitting LightGCN a second time."""
    from models.trend.ranker import TrendRanker

    for other in fitted.values():
        ranker = other.model
        if not isinstance(ranker, TrendRanker) or ranker.base != spec.name:
            continue
        if {"seed": ranker.seed, **ranker.base_kwargs} != spec.kwargs:
            continue
        early, served = ranker.early_base_, ranker.base_
        history = getattr(early, "history_", None)
        if served is None or history is None or not history.valid:
            continue
        epochs = ranker.base_epochs_ if fit_on == "train+valid" else None
        if epochs is None and history.best_epoch:
            epochs = max(1, int(history.best_epoch))
        metrics = {key: value for key, value in other.metrics.items()
                   if not key.startswith("ranker_") and key != "base_epochs"}
        return FittedModel(spec, served, epochs, other.updater_state, 0.0, metrics)
    return None


def build_specs(
    models: Mapping[str, Recommender] | Sequence[str],
    factory: ModelFactory | None,
    kwargs: Mapping[str, Mapping[str, object]],
    seed: int,
    *,
    required: bool = True,
) -> list[ModelSpec]:
    """The evaluated models: names built by ``factory`` (``seed`` added when it takes one),
    or unfitted instances (each fit works on a deep copy; ``epochs`` is set on the copy).
    ``required=False`` allows none (a report of the baselines alone)."""
    if isinstance(models, str):
        raise TypeError(f"models must be a list of names or a dict, got the string {models!r}; "
                        f"use [{models!r}]")
    specs: list[ModelSpec] = []
    if isinstance(models, Mapping):
        for name, model in models.items():
            if not isinstance(model, Recommender):
                raise TypeError(f"model {name!r} is a {type(model).__name__}, not a "
                                "Recommender")
            specs.append(ModelSpec(name, _copier(model), {}, False))
    else:
        names = list(models)
        if len(set(names)) != len(names):
            raise ValueError(f"model names repeat: {names}")
        factory = factory or (_default_factory() if names else None)
        for name in names:
            args = dict(kwargs.get(name, {}))
            if "seed" not in args and _takes_seed(factory, name):
                args["seed"] = seed
            make = _checked(factory, name)
            make(**args)  # fail on an unknown name or bad arguments before any fit
            specs.append(ModelSpec(name, make, args, "seed" in args))
    if not specs and required:
        raise ValueError("no models to evaluate: give at least one")
    return specs


def _copier(template: Recommender) -> Callable[..., Recommender]:
    def make(**overrides: object) -> Recommender:
        model = copy.deepcopy(template)
        for key, value in overrides.items():
            if hasattr(model, key):
                setattr(model, key, value)
        return model

    return make


def _checked(factory: ModelFactory, name: str) -> Callable[..., Recommender]:
    def make(**args: object) -> Recommender:
        try:
            model = factory(name, **args)
        except KeyError as exc:
            raise ValueError(f"unknown model {name!r}: the factory has no {exc}") from exc
        except ValueError as exc:  # e.g. make_model's "unknown model ...; choose one of"
            raise ValueError(f"cannot build model {name!r}: {exc}") from exc
        if not isinstance(model, Recommender):
            raise TypeError(f"model {name!r} is a {type(model).__name__}, not a Recommender")
        return model

    return make


def _takes_seed(factory: ModelFactory, name: str) -> bool:
    """Whether the model built for ``name`` accepts ``seed``: for ``models.make_model`` ask
    the registered class (a seedless model such as popularity must not get one), else the
    factory's own signature (``seed`` or ``**kwargs``)."""
    target: object = factory
    registry = getattr(sys.modules.get("models"), "MODELS", None)
    if factory is getattr(sys.modules.get("models"), "make_model", None) and registry:
        target = registry.get(name.lower(), factory)
    try:
        params = inspect.signature(target).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return "seed" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _default_factory() -> ModelFactory:
    try:
        from models import make_model  # type: ignore[attr-defined]
    except ImportError as exc:
        raise ImportError("models.make_model is not available; pass model_factory=... or a "
                          "dict of Recommender instances") from exc
    return make_model
