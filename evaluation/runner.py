"""One call from an interaction graph to a full evaluation: split, fit, score, stream, report.

This is the Python API behind ``streamrec evaluate``; it returns the metrics.json content.
"""

from __future__ import annotations

import copy
import inspect
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from functools import partial
from importlib import metadata

from tqdm.auto import tqdm

from evaluation.incremental import IncrementalApproach
from evaluation.protocol import EvaluationTask, evaluate_model
from evaluation.report import to_json, write_report
from evaluation.split import FitOn, temporal_split
from evaluation.streaming import (
    DAY,
    Approach,
    PopularityApproach,
    RetrainApproach,
    StaleApproach,
    evaluate_streaming,
)
from models.base import InteractionGraph, Recommender

#: builds an unfitted recommender from a name and keyword arguments (``seed`` among them)
ModelFactory = Callable[..., Recommender]

RECALL_FORM = "|P ∩ R| / min(|P|, K)"


def run_evaluation(
    graph: InteractionGraph,
    models: Mapping[str, Recommender] | Sequence[str],
    *,
    model_factory: ModelFactory | None = None,
    model_kwargs: Mapping[str, Mapping[str, object]] | None = None,
    ks: Sequence[int] = (10, 20, 50),
    train_frac: float = 0.8,
    valid_frac: float = 0.1,
    t1: float | None = None,
    t2: float | None = None,
    fit_on: FitOn = "train",
    seed: int = 0,
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    head_fraction: float = 0.2,
    activity_buckets: int = 4,
    batch_size: int | None = None,
    streaming: bool = True,
    streaming_approaches: Mapping[str, Approach] | None = None,
    streaming_retrain: bool = True,
    window_seconds: float = DAY,
    streaming_k: int = 20,
    max_windows: int | None = None,
    out_dir: str | None = None,
    dataset_name: str = "unnamed",
    progress: bool = True,
) -> dict:
    """Split ``graph`` in time, fit every model, evaluate it, and optionally write a report.

    Args:
        graph: the whole interaction stream, ``ts`` in epoch seconds.
        models: name -> unfitted :class:`Recommender`, or model names built by
            ``model_factory(name, **model_kwargs[name])``, with ``seed=seed`` added when
            the model takes a seed (``model_info.<name>.seeded`` records it).
        model_factory: builds models from names. (default: ``models.make_model``)
        model_kwargs: extra constructor arguments per model name. (default: none)
        ks: cut-offs. (default: ``(10, 20, 50)``)
        train_frac, valid_frac, t1, t2: split boundaries, see
            :func:`evaluation.split.temporal_split`. (default: 0.8 / 0.1 of the events)
        fit_on: ``"train"``: fit on train, validation passed to ``fit`` for early stopping
            only; ``"train+valid"``: fit on everything before ``t2``. The same history is
            masked at test time. (default: ``"train"``)
        seed: seed of the models built here and of the bootstrap. (default: ``0``)
        n_bootstrap: bootstrap resamples for the intervals. (default: ``1000``)
        ci_level: interval coverage. (default: ``0.95``)
        head_fraction: share of items that form the popularity head. (default: ``0.2``)
        activity_buckets: quantile buckets of users' training activity. (default: ``4``)
        batch_size: users scored at once. (default: memory-bounded, 8M scores)
        streaming: run the window-by-window comparison. (default: ``True``)
        streaming_approaches: approaches to compare. (default: every model as a stale
            base, as the base plus incremental updates (embedding models), as a full retrain
            before each window (unless ``streaming_retrain=False``), plus popularity
            refreshed before each window)
        streaming_retrain: include the per-window full retrain of every model (the costly
            reference the streaming path is compared with). (default: ``True``)
        window_seconds: streaming window length. (default: one day)
        streaming_k: cut-off of the streaming metrics. (default: ``20``)
        max_windows: evaluate only the first windows. (default: all)
        out_dir: where to write the report files. (default: ``None``, write nothing)
        dataset_name: shown in the report. (default: ``"unnamed"``)
        progress: show progress bars on stderr. (default: ``True``)

    Returns:
        The metrics.json content: ``dataset``, ``split``, ``protocol``, ``evaluation``,
        ``models`` (``{"<name>": {"recall@20": ..., "recall@20_ci": [lo, hi], ...}}``),
        ``slices``, ``model_info``, ``streaming`` and ``run``. Every wall-clock field
        ends in ``_seconds``; with ``run.started_at`` they are the only fields that vary
        between two runs with the same seed.

    >>> import numpy as np, torch
    >>> class Popular(Recommender):
    ...     def fit(self, graph, valid=None):
    ...         self.counts = np.bincount(graph.item, minlength=graph.num_items)
    ...         self.num_users = graph.num_users
    ...         return self
    ...     def user_embeddings(self): return torch.ones(self.num_users, 1)
    ...     def item_embeddings(self): return torch.tensor(self.counts).float().view(-1, 1)
    >>> rng = np.random.default_rng(0)
    >>> g = InteractionGraph.from_arrays(rng.integers(0, 30, 400), rng.integers(0, 40, 400),
    ...                                  np.arange(400) * 3600.0)
    >>> out = run_evaluation(g, {"popular": Popular()}, ks=(5, 10), n_bootstrap=50,
    ...                      progress=False)
    >>> {"split", "models", "streaming", "run"} <= set(out)
    True
    >>> 0.0 <= out["models"]["popular"]["recall@10"] <= 1.0
    True
    """
    started_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    t_start = time.perf_counter()
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] <= 0:
        raise ValueError(f"ks must be positive cut-offs, got {ks}")
    if ks[-1] > graph.num_items:
        raise ValueError(f"K={ks[-1]} exceeds the catalogue of {graph.num_items} items")
    split = temporal_split(graph, train_frac=train_frac, valid_frac=valid_frac, t1=t1, t2=t2)
    built, seeded = _build_models(models, model_factory, model_kwargs or {}, seed)
    # unfitted copies: the streaming "full retrain" approach refits one per window
    templates = {name: copy.deepcopy(m) for name, m in built.items()} if streaming_retrain else {}
    task = EvaluationTask.from_split(split, fit_on=fit_on, head_fraction=head_fraction,
                                     activity_buckets=activity_buckets)
    history = split.history(fit_on)
    valid = split.valid if fit_on == "train" else None
    results: dict[str, dict] = {}
    slices: dict[str, dict] = {}
    info: dict[str, dict] = {}
    bar = tqdm(total=2 * len(built) + int(streaming), desc="evaluation", disable=not progress)
    for name, model in built.items():
        bar.set_postfix_str(f"fit {name}")
        t0 = time.perf_counter()
        fitted = model.fit(history, valid)
        model = fitted if isinstance(fitted, Recommender) else model
        built[name] = model
        fit_seconds = time.perf_counter() - t0
        bar.update()
        bar.set_postfix_str(f"evaluate {name}")
        ev = evaluate_model(model, task, ks=ks, batch_size=batch_size, n_bootstrap=n_bootstrap,
                            ci_level=ci_level, seed=seed, progress=progress, name=name)
        bar.update()
        results[name] = ev.as_dict()
        slices[name] = ev.slices
        info[name] = {"class": type(model).__name__, "hyper_parameters":
                      model.hyper_parameters(), "seeded": name in seeded,
                      "fit_seconds": fit_seconds, "eval_seconds": ev.seconds}
    stream: dict = {}
    if streaming:
        bar.set_postfix_str("streaming")
        approaches = dict(streaming_approaches) if streaming_approaches is not None else {
            **{f"{n} (stale)": StaleApproach(m, trained_on=history) for n, m in built.items()},
            **{f"{n} (+incremental)": IncrementalApproach(m, trained_on=history)
               for n, m in built.items() if m.user_embeddings().shape[1] >= 2},
            **{f"{n} (retrain)": RetrainApproach(partial(copy.deepcopy, t))
               for n, t in templates.items()},
            "popularity (refreshed)": PopularityApproach()}
        stream = evaluate_streaming(graph, approaches, start=split.t2, end=split.end,
                                    window_seconds=window_seconds, k=streaming_k,
                                    max_windows=max_windows, batch_size=batch_size or 1024,
                                    progress=progress)
        bar.update()
    bar.close()
    result = {
        "dataset": {"name": dataset_name, "num_users": graph.num_users,
                    "num_items": graph.num_items, "num_events": graph.num_edges},
        "split": {**split.summary(), "train_frac": train_frac if t1 is None else None,
                  "valid_frac": valid_frac if t2 is None else None},
        "protocol": _protocol(ks, fit_on, head_fraction, activity_buckets, n_bootstrap,
                              ci_level, seed),
        "evaluation": {"n_users": len(task.users), "n_cold_users": int(task.cold.sum()),
                       "n_warm_users": int((~task.cold).sum()),
                       "dropped_users": task.dropped_users, **task.info},
        "models": results,
        "slices": slices,
        "model_info": info,
        "streaming": stream,
        "run": {"seed": seed, "started_at": started_at,
                "duration_seconds": time.perf_counter() - t_start, "versions": _versions()},
    }
    result = to_json(result)
    if out_dir is not None:
        write_report(result, out_dir)
    return result


def _build_models(
    models: Mapping[str, Recommender] | Sequence[str],
    factory: ModelFactory | None,
    kwargs: Mapping[str, Mapping[str, object]],
    seed: int,
) -> tuple[dict[str, Recommender], set[str]]:
    """The models by name, and the names that were built with the run's seed."""
    if isinstance(models, str):
        raise TypeError(f"models must be a list of names or a dict, got the string {models!r}; "
                        f"use [{models!r}]")
    seeded: set[str] = set()
    if isinstance(models, Mapping):
        built = dict(models)
    else:
        names = list(models)
        if len(set(names)) != len(names):
            raise ValueError(f"model names repeat: {names}")
        factory = factory or _default_factory()
        built = {}
        for name in names:
            args = dict(kwargs.get(name, {}))
            if "seed" not in args and _takes_seed(factory, name):
                args["seed"] = seed
            if "seed" in args:
                seeded.add(name)
            try:
                built[name] = factory(name, **args)
            except KeyError as exc:
                raise ValueError(f"unknown model {name!r}: the factory has no {exc}") from exc
            except ValueError as exc:  # e.g. make_model's "unknown model ...; choose one of"
                raise ValueError(f"cannot build model {name!r}: {exc}") from exc
    if not built:
        raise ValueError("no models to evaluate: give at least one")
    for name, model in built.items():
        if not isinstance(model, Recommender):
            raise TypeError(f"model {name!r} is a {type(model).__name__}, not a Recommender")
    return built, seeded


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


def _protocol(ks: Sequence[int], fit_on: str, head_fraction: float, activity_buckets: int,
              n_bootstrap: int, ci_level: float, seed: int) -> dict[str, object]:
    history = "events before t1" if fit_on == "train" else "events before t2"
    return {
        "ks": list(ks),
        "split": "global temporal: train [start, t1), validation [t1, t2), test [t2, end]",
        "fit_on": f"{fit_on} ({history})",
        "recall_form": f"recall@K = {RECALL_FORM} (capped denominator)",
        "ndcg": "binary gains, log2(rank + 1) discount, ideal over min(|P|, K) positives",
        "mrr": "reciprocal rank of the first positive within the top K, else 0",
        "positives": "a user's distinct test-period items not in their training history "
                     "(items first seen in test included)",
        "masking": f"each user's items in the model's training history ({history}) are "
                   "excluded from the ranking",
        "cold_start": "users absent from the training history are ranked by the popularity "
                      "fallback (training interaction counts), not the model",
        "known_items": "recall_known@K counts only positives that occur in the training history",
        "head_items": f"top {head_fraction:.0%} of training items by interaction count; the "
                      "rest, and items unseen in training, are tail",
        "activity_buckets": f"{activity_buckets} quantiles of warm users' training events",
        "ties": "equal scores are ranked by the lower item index",
        "confidence_intervals": f"{ci_level:.0%} percentile bootstrap over users, "
                                f"{n_bootstrap} resamples, seed {seed}",
        "seed": seed,
    }


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("streamrec", "torch", "torch-geometric", "numpy", "matplotlib", "tqdm"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
