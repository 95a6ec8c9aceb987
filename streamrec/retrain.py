"""The full retrain job: store snapshot up to a cutoff -> model -> new embedding version.

Order, which is what keeps serving safe: train, write the version (status building -> ready),
then activate it in one transaction. Anything that fails before activation leaves the
previous version serving; a version that failed while being written is marked failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from models import make_model, model_arguments
from models.base import InteractionGraph, Recommender
from models.neighbour_buffer import NeighbourBuffer
from models.training import has_scorable_user
from models.trend import TrendRanker
from models.trend.ranker import DEFAULT_BASE, BaseFit
from store.embeddings import EmbeddingStore, VersionInfo
from store.graph import GraphStore
from store.item_metadata import ItemMetadata
from streamrec.parallel_fit import ProcessesFit

log = logging.getLogger(__name__)


class RetrainError(RuntimeError):
    """The retrain could not run (no data, bad arguments); nothing was published."""


@dataclass
class RetrainPlan:
    """What to train.

    Attributes:
        model: ``trend`` (the trend ranker over a base model, ``extra={"base": ...}``,
            default ``lightgcn``; ``--epochs``/``--dim`` reach the base), ``lightgcn``,
            ``pinsage``, ``mf`` or ``popularity``.
        cutoff: epoch seconds; only events with ``ts <= cutoff`` are used (default: all).
        epochs / dim: passed to models that take them (default: the model's own).
        valid_fraction: the newest share of the snapshot's events held out for early
            stopping and the version's validation Recall@20 (default 0.1; 0 = no validation).
            The model is then refitted on the whole snapshot for the best epoch count.
        seed: the only source of randomness.
        keep: embedding versions whose vectors are kept (default 3).
        train_updater: also train the incremental updater on the held-back window and
            publish its weights with the version (default True; needs validation).
        processes: fit LightGCN / MF-BPR (a trend ranker's base too) data-parallel in this
            many local processes (torch.distributed, gloo; streamrec.parallel_fit); the
            same embeddings as one process within float tolerance (default 1).
        extra: further keyword arguments of the model.
    """

    model: str
    cutoff: float | None = None
    epochs: int | None = None
    dim: int | None = None
    valid_fraction: float = 0.1
    seed: int = 0
    keep: int = 3
    progress: bool = True
    train_updater: bool = True
    processes: int = 1
    extra: dict[str, object] = field(default_factory=dict)

    def model_kwargs(self) -> dict[str, object]:
        try:
            accepted = set(model_arguments(self.model))
        except ValueError as exc:
            raise RetrainError(str(exc)) from None
        wanted: dict[str, object] = {
            "epochs": self.epochs, "embedding_dim": self.dim, "seed": self.seed,
            "progress": self.progress,
        }
        # an extra None is meant (e.g. base=None: a trend ranker without base embeddings)
        kwargs = {k: v for k, v in wanted.items() if v is not None and k in accepted} | {
            k: v for k, v in self.extra.items() if k in accepted}
        if "base_kwargs" in accepted:  # a ranker over a base model: --epochs/--dim are its
            base = kwargs.get("base", DEFAULT_BASE)
            if base is not None:
                base_accepted = set(model_arguments(str(base)))
                own = {"epochs": self.epochs, "embedding_dim": self.dim,
                       "progress": self.progress}
                kwargs["base_kwargs"] = {
                    **{k: v for k, v in own.items() if v is not None and k in base_accepted},
                    **dict(self.extra.get("base_kwargs", {}))}  # type: ignore[arg-type]
        return kwargs


def split_for_validation(
    graph: InteractionGraph, fraction: float
) -> tuple[InteractionGraph, InteractionGraph | None]:
    """(older events, newest ``fraction`` of events) by time; no validation below 100 events."""
    if fraction <= 0 or graph.num_edges < 100:
        return graph, None
    t_split = float(np.quantile(graph.ts, 1.0 - fraction))
    train, valid = graph.subset(graph.ts < t_split), graph.subset(graph.ts >= t_split)
    if train.num_edges == 0 or not has_scorable_user(train, valid):
        log.info("the validation window has no warm user with a new item; no validation")
        return graph, None
    return train, valid


@dataclass
class FitOutcome:
    """The served model, its validation metrics, and the updater trained alongside it.

    Attributes:
        model: the model to serve (refitted on all events for ``epochs`` when validated).
        metrics: ``valid_recall@20``, ``best_epoch`` and the updater's figures, when known.
        updater_state: the trained incremental updater's weights, or None.
        epochs: the epoch count chosen on validation (None: nothing was selected).
    """

    model: Recommender
    metrics: dict[str, float]
    updater_state: bytes | None = None
    epochs: int | None = None


def fit_model(plan: RetrainPlan, graph: InteractionGraph) -> FitOutcome:
    """Fit ``plan.model`` on ``graph`` (early stopping on the newest events), then train the
    incremental updater by ROLAND's live-update scheme on that same held-back window, starting
    from the model fitted before it, and refit the model on all events."""
    kwargs = plan.model_kwargs()
    train, valid = split_for_validation(graph, plan.valid_fraction)
    fit = ProcessesFit(plan.processes)
    if valid is None:
        return FitOutcome(fit(_made(partial(make_model, plan.model), kwargs, fit), graph, None),
                          {})
    return fit_validated(partial(make_model, plan.model), kwargs, graph, train, valid,
                         seed=plan.seed, progress=plan.progress,
                         train_updater=plan.train_updater, fit=fit)


def _made(make: Callable[..., Recommender], kwargs: dict[str, object], fit: BaseFit
          ) -> Recommender:
    """``make(**kwargs)``; a trend ranker fits its base with ``fit`` too."""
    model = make(**kwargs)
    if isinstance(model, TrendRanker):
        model.fit_base = fit
    return model


def fit_validated(
    make: Callable[..., Recommender],
    kwargs: dict[str, object],
    graph: InteractionGraph,
    train: InteractionGraph,
    valid: InteractionGraph,
    *,
    seed: int = 0,
    progress: bool = True,
    train_updater: bool = True,
    refit: bool = True,
    fit: BaseFit = ProcessesFit(),
) -> FitOutcome:
    """What a retrain fits once ``graph`` is split into ``train`` and ``valid`` (later events):
    ``make(**kwargs)`` fitted on train with early stopping on valid picks the epoch count; the
    updater is trained on the valid window from that model; then ``make(**kwargs, epochs=best)``
    is refitted on all of ``graph``. ``streamrec evaluate`` calls this too, so its refit is
    the retrain's. ``refit=False`` serves the model fitted on train (no refit). ``fit`` fits
    each model (:class:`~streamrec.parallel_fit.ProcessesFit`: in this process, or in
    several)."""
    metrics: dict[str, float] = {}
    model = _made(make, kwargs, fit)
    if isinstance(model, TrendRanker):
        return _fit_ranker(model, graph, train, valid, seed=seed, progress=progress,
                           train_updater=train_updater, refit=refit)
    fit(model, train, valid)
    if not _early_stopping_metrics(model, metrics):
        # nothing to select (e.g. popularity): the fit on all events is the model
        return FitOutcome(fit(make(**kwargs), graph, None) if refit else model, metrics)
    epochs = max(1, int(metrics["best_epoch"]))
    state = None
    if train_updater:
        state = _train_updater(graph, model, valid.num_edges / graph.num_edges, metrics,
                               seed=seed, progress=progress)
    if not refit:
        return FitOutcome(model, metrics, state, epochs)
    log.info("refitting on all %d events for %d epochs", graph.num_edges, epochs)
    return FitOutcome(fit(make(**{**kwargs, "epochs": epochs}), graph, None), metrics, state,
                      epochs)


def _early_stopping_metrics(model: Recommender | None, metrics: dict[str, float]) -> bool:
    """Record ``valid_recall@20`` and ``best_epoch`` of a model fitted with early stopping;
    False (nothing recorded) when it has no validation history."""
    history = getattr(model, "history_", None)
    if history is None or not history.valid:
        return False
    metrics["valid_recall@20"] = float(history.best_metric or 0.0)
    metrics["best_epoch"] = float(history.best_epoch or len(history.loss))
    return True


def _fit_ranker(ranker: TrendRanker, graph: InteractionGraph, train: InteractionGraph,
                valid: InteractionGraph, *, seed: int, progress: bool, train_updater: bool,
                refit: bool) -> FitOutcome:
    """The ranker's own split fit (its base: early stopping on ``valid``, refit on
    ``graph``), and the updater trained from the base fitted on ``train``."""
    ranker.fit_split(graph if refit else train, train, valid)
    metrics = {f"ranker_{key}": value for key, value in ranker.validation_.items()}
    _early_stopping_metrics(ranker.early_base_, metrics)
    state = None
    if train_updater and ranker.early_base_ is not None:
        state = _train_updater(graph, ranker.early_base_, valid.num_edges / graph.num_edges,
                               metrics, seed=seed, progress=progress)
    if ranker.base_epochs_ is not None:
        metrics["base_epochs"] = float(ranker.base_epochs_)
    # epochs=None: the ranker itself takes none (its base's count is in the metrics)
    return FitOutcome(ranker, metrics, state, None)


def _train_updater(graph: InteractionGraph, early: Recommender, holdout: float,
                   metrics: dict[str, float], *, seed: int, progress: bool) -> bytes | None:
    """Live-update training: base = the model fitted before the held-back window."""
    from models.live_update import LiveUpdateHistory, train_live_update

    base = (early.user_embeddings(), early.item_embeddings())
    if base[0].shape[1] < 2:
        return None  # a 1-d popularity score has nothing for attention to work on
    history = LiveUpdateHistory()
    started = time.perf_counter()
    module = train_live_update(graph, base, holdout=holdout, seed=seed,
                               progress=progress, history=history)
    metrics["updater_seconds"] = time.perf_counter() - started
    if history.valid:
        metrics["updater_valid_recall@20"] = float(max(v for _, v in history.valid))
    return module.to_bytes()


def neighbour_buffers(graph: InteractionGraph, dim: int) -> bytes | None:
    """The live updater's neighbour buffers (``N`` = 20, its default) of the snapshot a
    version of ``dim`` trains on, published with it so the updater's start-up reads them
    instead of the history; None for a 1-d model (nothing to fold in)."""
    return None if dim < 2 else NeighbourBuffer.from_graph(graph).to_bytes()


def retrain(graph_store: GraphStore, embeddings: EmbeddingStore, plan: RetrainPlan) -> VersionInfo:
    """Run a full retrain and activate the new version; returns it.

    Raises:
        RetrainError: the store holds no events up to the cutoff, or the model is unknown.
    """
    started = time.perf_counter()
    plan.model_kwargs()  # fail on an unknown model before reading the store
    # the ingest sequence read with the snapshot tells the live updater what the base saw
    graph, seq = graph_store.snapshot_seen(until=plan.cutoff)
    if graph.num_edges == 0:
        when = "" if plan.cutoff is None else f" up to cutoff {plan.cutoff}"
        raise RetrainError(f"the store holds no interactions{when}; ingest events first")
    cutoff = plan.cutoff if plan.cutoff is not None else float(graph.ts.max())
    if "content" in model_arguments(plan.model) and "content" not in plan.extra:
        content = ItemMetadata(graph_store).content()
        if content is not None:
            plan = replace(plan, extra={**plan.extra, "content": content})
    outcome = fit_model(plan, graph)
    model, metrics = outcome.model, outcome.metrics
    users, items = model.user_embeddings().numpy(), model.item_embeddings().numpy()
    buffers_started = time.perf_counter()
    buffers = neighbour_buffers(graph, users.shape[1])
    metrics.update(
        train_seconds=time.perf_counter() - started,
        num_edges=float(graph.num_edges),
        buffer_seconds=time.perf_counter() - buffers_started,
    )
    version_id = embeddings.create_version(
        plan.model,
        cutoff,
        users,
        items,
        hyper_parameters={"model": plan.model, **model.hyper_parameters(), "seed": plan.seed,
                          **(model.fitted_summary() if isinstance(model, TrendRanker) else {})},
        metrics=metrics,
        updater_state=outcome.updater_state,
        ingest_seq=seq,
        ranker_state=model.serving_state() if isinstance(model, TrendRanker) else None,
        neighbour_buffers=buffers,
    )
    embeddings.activate(version_id, keep=plan.keep)
    info = embeddings.get_version(version_id)
    log.info("activated %s (%s, cutoff %.0f) in %.1fs", info.name, plan.model, cutoff,
             time.perf_counter() - started)
    return info
