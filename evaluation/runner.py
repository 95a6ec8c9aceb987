"""One call from an interaction graph to a full evaluation: split, fit, score, stream, report.

This is the Python API behind ``streamrec evaluate``; it returns the metrics.json content.
The protocol mirrors serving: models are fitted as ``streamrec retrain`` fits them
(:mod:`evaluation.fitting`), cold users get what ``recommend`` serves them, and every
report carries the trending baselines tuned on validation (:mod:`evaluation.baselines`)
and each model's ratio to the best of them (:mod:`evaluation.headline`).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata

from tqdm.auto import tqdm

from evaluation.baselines import NAMES as BASELINE_NAMES
from evaluation.baselines import TunedBaseline, tune_baselines
from evaluation.fitting import FittedModel, ModelFactory, build_specs, fit_protocol, shared_base
from evaluation.headline import headline
from evaluation.incremental import IncrementalApproach, StatefulApproach
from evaluation.protocol import EvaluationTask, evaluate_model
from evaluation.report import headline_k, to_json, write_report
from evaluation.split import FitOn, temporal_split
from evaluation.streaming import (
    Approach,
    RetrainApproach,
    StaleApproach,
    evaluate_streaming,
    plan_windows,
)
from models.base import InteractionGraph, Recommender

RECALL_FORM = "|P ∩ R| / min(|P|, K)"
#: the streaming report's default number of windows over the test period (at most)
TARGET_WINDOWS = 30

__all__ = ["ModelFactory", "RECALL_FORM", "TARGET_WINDOWS", "run_evaluation"]


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
    fit_on: FitOn = "train+valid",
    seed: int = 0,
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    head_fraction: float = 0.2,
    activity_buckets: int = 4,
    batch_size: int | None = None,
    baselines: bool = True,
    streaming: bool = True,
    streaming_approaches: Mapping[str, Approach] | None = None,
    streaming_retrain: bool = False,
    window_seconds: float | None = None,
    target_windows: int = TARGET_WINDOWS,
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
            the model takes a seed (``model_info.<name>.seeded`` records it); may be
            empty when ``baselines`` is on.
        model_factory: builds models from names. (default: ``models.make_model``)
        model_kwargs: extra constructor arguments per model name. (default: none)
        ks: cut-offs. (default: ``(10, 20, 50)``)
        train_frac, valid_frac, t1, t2: split boundaries, see
            :func:`evaluation.split.temporal_split`. (default: 0.8 / 0.1 of the events)
        fit_on: ``"train+valid"``: epochs chosen on validation (fit on train, early
            stopping on validation), then every model refitted on everything before ``t2``
            for those epochs, as ``streamrec retrain`` does; ``"train"``: the model fitted
            on train is evaluated. The same history is masked at test time.
            (default: ``"train+valid"``)
        seed: seed of the models built here and of the bootstrap. (default: ``0``)
        n_bootstrap: bootstrap resamples for the intervals. (default: ``1000``)
        ci_level: interval coverage. (default: ``0.95``)
        head_fraction: share of items that form the popularity head. (default: ``0.2``)
        activity_buckets: quantile buckets of users' training activity. (default: ``4``)
        batch_size: users scored at once. (default: memory-bounded, 8M scores)
        baselines: add the trending baselines (all-time, last-W-days, decayed; W and the
            half-life chosen on validation) and the ratio headline. (default: ``True``)
        streaming: run the window-by-window comparison. (default: ``True``)
        streaming_approaches: approaches to compare. (default: every model as a stale
            base and as the base plus incremental updates (embedding models: the updater a
            retrain trains; models with ``update(users, items, ts)``: their own per-event
            state), the baselines refreshed before each window, and,
            with ``streaming_retrain``, a full retrain of every model before each window)
        streaming_retrain: include the per-window full retrain of every model (the costly
            reference; opt-in). (default: ``False``)
        window_seconds: streaming window length. (default: whole days, so that at most
            ``target_windows`` windows span the test period; one day for short periods)
        target_windows: most windows of the default window length. (default: ``30``)
        streaming_k: cut-off of the streaming metrics. (default: ``20``)
        max_windows: evaluate only the first windows. (default: all)
        out_dir: where to write the report files. (default: ``None``, write nothing)
        dataset_name: shown in the report. (default: ``"unnamed"``)
        progress: show progress bars on stderr. (default: ``True``)

    Returns:
        The metrics.json content: ``dataset``, ``split``, ``protocol``, ``evaluation``,
        ``headline`` (each entry's ratio to the best baseline and the paired bootstrap
        interval of the per-user difference), ``models`` (``{"<name>": {"recall@20": ...,
        "recall@20_ci": [lo, hi], ...}}``, baselines included), ``slices``, ``model_info``
        (``baseline: true`` on baselines, the chosen epochs, window and half-life),
        ``streaming`` and ``run``. Every wall-clock field ends in ``_seconds``; with
        ``run.started_at`` they are the only fields that vary between two runs with the
        same seed.

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
    >>> {"split", "models", "headline", "streaming", "run"} <= set(out)
    True
    >>> 0.0 <= out["models"]["popular"]["recall@10"] <= 1.0
    True
    >>> out["model_info"]["pop-decayed"]["baseline"]
    True
    """
    started_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    t_start = time.perf_counter()
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] <= 0:
        raise ValueError(f"ks must be positive cut-offs, got {ks}")
    if ks[-1] > graph.num_items:
        raise ValueError(f"K={ks[-1]} exceeds the catalogue of {graph.num_items} items")
    if fit_on not in ("train", "train+valid"):
        raise ValueError(f"fit_on must be 'train' or 'train+valid', got {fit_on!r}")
    split = temporal_split(graph, train_frac=train_frac, valid_frac=valid_frac, t1=t1, t2=t2)
    specs = build_specs(models, model_factory, model_kwargs or {}, seed, required=not baselines)
    clash = {s.name for s in specs} & set(BASELINE_NAMES.values()) if baselines else set()
    if clash:
        raise ValueError(f"model names {sorted(clash)} are taken by the baselines; rename them")
    task = EvaluationTask.from_split(split, fit_on=fit_on, head_fraction=head_fraction,
                                     activity_buckets=activity_buckets)
    history = split.history(fit_on)
    k_head = headline_k(list(ks))
    results: dict[str, dict] = {}
    slices: dict[str, dict] = {}
    info: dict[str, dict] = {}
    per_user: dict[str, object] = {}
    bar = tqdm(total=len(specs) + int(baselines) + int(streaming), desc="evaluation",
               disable=not progress)

    def evaluate(name: str, model: Recommender, fields: dict[str, object]) -> None:
        ev = evaluate_model(model, task, ks=ks, batch_size=batch_size, n_bootstrap=n_bootstrap,
                            ci_level=ci_level, seed=seed, progress=progress, name=name)
        results[name], slices[name], per_user[name] = ev.as_dict(), ev.slices, ev.per_user
        info[name] = {**fields, "eval_seconds": ev.seconds}

    tuned: list[TunedBaseline] = []
    if baselines:
        bar.set_postfix_str("baselines")
        t0 = time.perf_counter()
        tuned = tune_baselines(split.train, split.valid, k=k_head)
        tune_seconds = time.perf_counter() - t0
        for base in tuned:
            t0 = time.perf_counter()
            model = base.make().fit(history)
            evaluate(base.name, model, {
                "class": type(model).__name__, "hyper_parameters": model.hyper_parameters(),
                "seeded": False, "fit_on": fit_on, **base.info(f"recall@{k_head}"),
                "fit_seconds": time.perf_counter() - t0 + tune_seconds / len(tuned)})
        bar.update()
    fitted: dict[str, FittedModel] = {}
    for spec in specs:
        bar.set_postfix_str(f"fit {spec.name}")
        reused = shared_base(spec, fitted, fit_on)
        fitted[spec.name] = reused or fit_protocol(spec, split, fit_on, seed=seed,
                                                   train_updater=streaming)
        fields = fitted[spec.name].info(fit_on)
        if reused is not None:
            fields["fitted_as"] = "the trend ranker's base (the same fit, not repeated)"
        bar.set_postfix_str(f"evaluate {spec.name}")
        evaluate(spec.name, fitted[spec.name].model, fields)
        bar.update()
    top = headline(results, per_user, [b.name for b in tuned], f"recall@{k_head}",
                   n_boot=n_bootstrap, level=ci_level, seed=seed) if tuned else {}
    stream: dict = {}
    if streaming:
        bar.set_postfix_str("streaming")
        if window_seconds is None:
            window_seconds, policy = plan_windows(split.t2, split.end, target=target_windows)
        else:
            policy = "given"
        approaches, roles = _approaches(fitted, tuned, history, streaming_retrain) \
            if streaming_approaches is None else (dict(streaming_approaches), {})
        stream = evaluate_streaming(graph, approaches, start=split.t2, end=split.end,
                                    window_seconds=window_seconds, k=streaming_k,
                                    max_windows=max_windows, batch_size=batch_size or 1024,
                                    progress=progress)
        stream["window_policy"] = policy
        stream["retrain"] = ("a full retrain of every model before each window" if
                             streaming_retrain else "off (opt-in: --streaming-retrain)")
        stream["approach_info"] = roles
        _streaming_ratios(stream, roles)
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
        "headline": top,
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


def _approaches(fitted: Mapping[str, FittedModel], tuned: Sequence[TunedBaseline],
                history: InteractionGraph, retrain: bool
                ) -> tuple[dict[str, Approach], dict[str, dict[str, object]]]:
    """The default streaming approaches, named after their model, and what each one is."""
    approaches: dict[str, Approach] = {}
    roles: dict[str, dict[str, object]] = {}

    def add(name: str, approach: Approach, **role: object) -> None:
        approaches[name] = approach
        roles[name] = role

    for name, fit in fitted.items():
        add(f"{name} (stale)", StaleApproach(fit.model, trained_on=history), model=name,
            kind="stale", baseline=False)
        if callable(getattr(fit.model, "update", None)):  # its own per-event state
            add(f"{name} (+incremental)", StatefulApproach(fit.model, trained_on=history),
                model=name, kind="incremental", baseline=False, updater="model.update")
        elif (type(fit.model).score is Recommender.score
              and fit.model.user_embeddings().shape[1] >= 2):
            add(f"{name} (+incremental)", IncrementalApproach(
                fit.model, trained_on=history, updater=fit.updater_state), model=name,
                kind="incremental", baseline=False,
                updater="trained" if fit.updater_state is not None else "untrained")
        if retrain:
            add(f"{name} (retrain)", RetrainApproach(fit.make_refit), model=name,
                kind="retrain", baseline=False, epochs=fit.epochs)
    for base in tuned:
        add(f"{base.name} (refreshed)", RetrainApproach(base.make), model=base.name,
            kind="refreshed", baseline=True, days=base.days)
    return approaches, roles


def _streaming_ratios(stream: dict, roles: Mapping[str, Mapping[str, object]]) -> None:
    """Add each approach's ``ratio_to_best_baseline`` (pooled recall over the best refreshed
    baseline's) to the streaming summary, and ``best_baseline``."""
    key, summary = f"recall@{stream['k']}", stream["summary"]
    scored = [n for n, role in roles.items() if role.get("baseline") and key in summary[n]]
    if not scored:
        return
    best = max(scored, key=lambda n: summary[n][key])
    stream["best_baseline"] = best
    for values in summary.values():
        if key in values:
            ok = summary[best][key] > 0
            values["ratio_to_best_baseline"] = values[key] / summary[best][key] if ok else None


def _protocol(ks: Sequence[int], fit_on: str, head_fraction: float, activity_buckets: int,
              n_bootstrap: int, ci_level: float, seed: int) -> dict[str, object]:
    history = "events before t1" if fit_on == "train" else "events before t2"
    how = ("the model fitted on train, early stopping on validation" if fit_on == "train"
           else "epochs chosen on validation (fit on train, early stopping on validation), "
           "then refitted on every event before t2 for them, as `streamrec retrain` fits")
    return {
        "ks": list(ks),
        "split": "global temporal: train [start, t1), validation [t1, t2), test [t2, end]",
        "fit_on": f"{fit_on} ({history}): {how}",
        "recall_form": f"recall@K = {RECALL_FORM} (capped denominator)",
        "ndcg": "binary gains, log2(rank + 1) discount, ideal over min(|P|, K) positives",
        "mrr": "reciprocal rank of the first positive within the top K, else 0",
        "positives": "a user's distinct test-period items not in their training history "
                     "(items first seen in test included)",
        "masking": f"each user's items in the model's training history ({history}) are "
                   "excluded from the ranking",
        "cold_start": "users absent from the training history are ranked as `recommend` "
                      "ranks them: the model's cold_scores(history), by default the service's "
                      "fallback (events per item over the last 7 days before t2)",
        "baselines": "pop-alltime (all-time counts), pop-recent (last W days, W in "
                     "1, 2, 3, 7, 14, 28) and pop-decayed (half-life in 0.5, 1, 2, 3, "
                     "7, 14, 30 days), W and the half-life chosen by validation recall, then "
                     "refitted on the models' history; they rank cold users by the same list",
        "headline": f"each model's ratio to the best baseline, with the {ci_level:.0%} paired "
                    "bootstrap interval of the per-user difference",
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
