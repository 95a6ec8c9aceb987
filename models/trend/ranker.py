"""A trend-aware personalised ranker: decayed popularity, a user's recent item-to-item
transitions and (optionally) base LightGCN/PinSage embeddings, blended with weights chosen
on a validation window."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from models.base import InteractionGraph, Recommender
from models.training import has_scorable_user
from models.trend.content import ItemContent
from models.trend.scoring import (
    DAY,
    TrendParams,
    content_scores,
    covis_scores,
    standardised,
    trend_scores,
)
from models.trend.state import TrendState
from models.trend.tuning import (
    CONTENT_WEIGHTS,
    COVIS_WEIGHTS,
    EMBEDDING_WEIGHTS,
    LONG_HALF_LIVES_DAYS,
    LONG_WEIGHTS,
    SHORT_HALF_LIVES_DAYS,
    tune,
    validation_steps,
)

#: the base embedding model of a ranker built without one named
DEFAULT_BASE = "lightgcn"
#: fits a base model: ``fit(model, graph, valid)`` returns ``model`` fitted
BaseFit = Callable[[Recommender, InteractionGraph, "InteractionGraph | None"], Recommender]


class TrendRanker(Recommender):
    """Ranks by the trend of each item, moved per user by what their recent items lead to.

    The score is documented in :mod:`models.trend.scoring`. :meth:`fit` holds back the
    newest ``valid_fraction`` of the events (or uses ``valid`` when given), chooses the
    half-lives and weights there (:func:`models.trend.tuning.tune`), then rebuilds the
    state on every event and refits the base with its validated epoch count. Users without
    events are ranked by the trend alone; :meth:`update` applies new events, so the
    ranking moves with every event without a refit.

    Args:
        base: an unfitted embedding model (e.g. ``LightGCN()``, or a name for
            ``models.make_model`` such as ``"lightgcn"``, built with ``seed``) whose inner
            products may enter the score, and which provides :meth:`user_embeddings` /
            :meth:`item_embeddings`; ``None``: none, a count model. (default:
            ``"lightgcn"``)
        base_kwargs: keyword arguments for a base given by name. (default: none)
        short_half_lives_days, long_half_lives_days, long_weights, covis_weights,
            embedding_weights, content_weights: the grids searched (``inf`` = all-time
            counts). (default: those of :mod:`models.trend.tuning`)
        content: the items' tags and release years, aligned with the graph's item
            indices; adds the tag and release-age affinity terms, their weights chosen
            with the others (``0`` when they do not help). (default: ``None``: none)
        window: transition window, in events. (default: ``5``)
        n_recent: recent items kept and queried per user. (default: ``5``)
        valid_fraction: share of the newest events held back for the choice when ``fit``
            gets no ``valid``. (default: ``0.1``)
        horizon_seconds: how long a ranking is served before the validation walk re-ranks
            with the events since (the state moves per event in service, so short);
            ``None``: rank once at the window's start and score the whole window.
            (default: one day)
        k: the cut-off whose recall is maximised. (default: ``20``)
        seed: seed of the validation users' draw and of the base. (default: ``0``)

    >>> rng = np.random.default_rng(0)
    >>> g = InteractionGraph.from_arrays(rng.integers(0, 40, 600), rng.integers(0, 30, 600),
    ...                                  np.sort(rng.uniform(0, 20 * DAY, 600)))
    >>> ranker = TrendRanker(base=None).fit(g)
    >>> ranker.score(torch.tensor([0, 39])).shape
    torch.Size([2, 30])
    >>> sorted(ranker.fitted_params().as_dict())[:3]
    ['age_weight', 'covis_weight', 'embedding_weight']
    """

    name = "trend"
    _param_names = ("base", "base_kwargs", "short_half_lives_days", "long_half_lives_days",
                    "long_weights", "covis_weights", "embedding_weights", "content_weights",
                    "window", "n_recent",
                    "valid_fraction", "horizon_seconds", "k", "seed")

    def __init__(
        self,
        base: Recommender | str | None = DEFAULT_BASE,
        *,
        base_kwargs: dict[str, object] | None = None,
        short_half_lives_days: Sequence[float] = SHORT_HALF_LIVES_DAYS,
        long_half_lives_days: Sequence[float] = LONG_HALF_LIVES_DAYS,
        long_weights: Sequence[float] = LONG_WEIGHTS,
        covis_weights: Sequence[float] = COVIS_WEIGHTS,
        embedding_weights: Sequence[float] = EMBEDDING_WEIGHTS,
        content_weights: Sequence[float] = CONTENT_WEIGHTS,
        content: ItemContent | None = None,
        window: int = 5,
        n_recent: int = 5,
        valid_fraction: float = 0.1,
        horizon_seconds: float | None = DAY,
        k: int = 20,
        seed: int = 0,
    ) -> None:
        if not 0.0 < valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must lie in (0, 1), got {valid_fraction}")
        self.base = base
        self.base_kwargs = dict(base_kwargs or {})
        self.short_half_lives_days = tuple(short_half_lives_days)
        self.long_half_lives_days = tuple(long_half_lives_days)
        self.long_weights, self.covis_weights = tuple(long_weights), tuple(covis_weights)
        self.embedding_weights = tuple(embedding_weights)
        self.content_weights = tuple(content_weights)
        self.content = content
        self.window, self.n_recent = window, n_recent
        if horizon_seconds is not None and horizon_seconds <= 0:
            raise ValueError(f"horizon_seconds must be > 0 or None, got {horizon_seconds}")
        self.valid_fraction, self.k, self.seed = valid_fraction, k, seed
        self.horizon_seconds = horizon_seconds
        self.params_: TrendParams | None = None
        self.state_: TrendState | None = None
        self.base_: Recommender | None = None
        self.early_base_: Recommender | None = None
        self.base_epochs_: int | None = None
        self.validation_: dict[str, float] = {}
        self._num_users = 0
        #: how the base is fitted: ``fit_base(model, graph, valid)`` returns it fitted
        #: (default ``model.fit(graph, valid)``; a retrain may fit it in several processes)
        self.fit_base: BaseFit = _fit

    def __repr__(self) -> str:
        return (f"TrendRanker(base={self._base_name()}, window={self.window}, "
                f"n_recent={self.n_recent})")

    def __deepcopy__(self, memo: dict[int, object]) -> TrendRanker:
        # the fitted bases are read-only after fit and hold sparse CSR tensors, which torch
        # cannot deep-copy: copies share them and own everything else (the state above all)
        shared = {id(self.base_), id(self.early_base_)}
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = value if id(value) in shared and value is not None else \
                copy.deepcopy(value, memo)
        return clone

    # -- fitting ------------------------------------------------------------------------
    def _base_name(self) -> str | None:
        if self.base is None or isinstance(self.base, str):
            return self.base
        return type(self.base).__name__

    def _base_template(self) -> Recommender | None:
        if self.base is None or isinstance(self.base, Recommender):
            return self.base
        from models import make_model  # local: models/__init__ imports this module

        kwargs = {"seed": self.seed, **self.base_kwargs}
        return make_model(self.base, **kwargs)

    def _half_lives(self) -> tuple[float, ...]:
        days = {h for h in self.short_half_lives_days + self.long_half_lives_days
                if not math.isinf(h)}
        return tuple(sorted(h * DAY for h in days))

    def fit(self, graph: InteractionGraph, valid: InteractionGraph | None = None
            ) -> TrendRanker:
        """Without ``valid``: hold back the newest ``valid_fraction`` of ``graph`` to choose
        the parameters (and the base's epochs), then build the state on all of it (what
        ``streamrec retrain`` serves). With ``valid`` (later events): choose on it, keep the
        state and base fitted on ``graph`` alone."""
        if valid is not None:
            return self.fit_split(graph, graph, valid)
        if graph.num_edges < 100:
            return self.fit_split(graph, graph, None)
        cut = float(np.quantile(graph.ts, 1.0 - self.valid_fraction))
        return self.fit_split(graph, graph.subset(graph.ts < cut), graph.subset(graph.ts >= cut))

    def fit_split(self, graph: InteractionGraph, train: InteractionGraph,
                  valid: InteractionGraph | None) -> TrendRanker:
        """Choose the parameters by walking ``valid`` from a state built on ``train`` (the
        base fitted on ``train`` with early stopping on ``valid``), then build the state on
        ``graph`` and refit the base on it for the chosen epochs (unless ``graph`` is
        ``train``). The base fitted on ``train`` stays as :attr:`early_base_` (a retrain
        trains the incremental updater from it)."""
        half_lives = self._half_lives()
        template = self._base_template()
        # a base stops early only on users it knows who met new items in ``valid``
        base_valid = valid if valid is not None and has_scorable_user(train, valid) else None
        early = self.fit_base(copy.deepcopy(template), train, base_valid) \
            if template is not None else None
        steps = []
        if valid is not None and valid.num_edges and train.num_edges:
            state = TrendState.from_graph(train, half_lives, window=self.window,
                                          n_recent=self.n_recent, content=self._content(train))
            steps = validation_steps(state, train, valid, half_lives=half_lives,
                                     horizon=self.horizon_seconds,
                                     base_dots=None if early is None else _dots(early),
                                     k=self.k, seed=self.seed)
        if steps:
            self.params_, self.validation_ = tune(
                steps,
                short_half_lives=[h * DAY for h in self.short_half_lives_days],
                long_half_lives=[h * DAY for h in self.long_half_lives_days],
                long_weights=self.long_weights, covis_weights=self.covis_weights,
                embedding_weights=self.embedding_weights,
                content_weights=self.content_weights)
        else:  # nothing to choose on: the first short half-life, no personal terms
            self.params_ = TrendParams(self.short_half_lives_days[0] * DAY,
                                       self.long_half_lives_days[-1] * DAY, 0.0, 0.0)
            self.validation_ = {}
        self.state_ = TrendState.from_graph(graph, half_lives, window=self.window,
                                            n_recent=self.n_recent, content=self._content(graph))
        self.early_base_ = early
        self.base_ = None
        self.base_epochs_: int | None = None
        if template is not None and early is not None:
            self.base_, self.base_epochs_ = (early, None) if graph is train else _refit(
                template, early, graph, self.fit_base)
        self._num_users = graph.num_users
        return self

    def _content(self, graph: InteractionGraph) -> ItemContent | None:
        return None if self.content is None else self.content.padded(graph.num_items)

    def update(self, users: Sequence[int] | np.ndarray, items: Sequence[int] | np.ndarray,
               ts: Sequence[float] | np.ndarray) -> TrendRanker:
        """Apply new events (dense indices, epoch seconds) to the state; returns ``self``."""
        self._state().update(users, items, ts)
        self._num_users = max(self._num_users, int(np.max(users, initial=-1)) + 1)
        return self

    # -- scoring ------------------------------------------------------------------------
    def fitted_params(self) -> TrendParams:
        """The parameters chosen by :meth:`fit`."""
        if self.params_ is None:
            raise RuntimeError("TrendRanker is not fitted; call fit(graph) first")
        return self.params_

    def _state(self) -> TrendState:
        if self.state_ is None:
            raise RuntimeError("TrendRanker is not fitted; call fit(graph) first")
        return self.state_

    def score(self, users: torch.Tensor, t: float | None = None) -> torch.Tensor:
        """float32 ``[len(users), num_items]`` scores at time ``t`` (epoch seconds; default:
        the newest event applied)."""
        state, params = self._state(), self.fitted_params()
        when = state.last_ts if t is None else float(t)
        u = users.cpu().numpy().astype(np.int64)
        out = np.tile(trend_scores(state, params, when), (len(u), 1))
        if params.covis_weight:
            out += params.covis_weight * covis_scores(state, params, u)
        if params.embedding_weight and self.base_ is not None:
            known = u < self.base_.user_embeddings().shape[0]
            if known.any():
                z = standardised(_dots(self.base_)(u[known]))
                out[known, : z.shape[1]] += params.embedding_weight * z
        if params.tag_weight or params.age_weight:
            out += content_scores(state, params, u, when)
        return torch.from_numpy(out).float()

    def serving_state(self) -> bytes:
        """The fitted parameters and state as bytes for a version
        (:func:`models.trend.serving.from_bytes` reads them back)."""
        from models.trend.serving import to_bytes

        return to_bytes(self._state(), self.fitted_params())

    def cold_scores(self, history: InteractionGraph) -> torch.Tensor:
        """float32 ``[history.num_items]``: a user without events gets the trend term at
        the newest event of ``history`` (what :meth:`score` gives such a user), never
        all-time counts; items the state has not seen score as items without events."""
        state, params = self._state(), self.fitted_params()
        when = float(history.ts.max()) if history.num_edges else state.last_ts
        trend = trend_scores(state, params, max(when, state.last_ts))
        out = np.full(history.num_items, np.log(params.smoothing))
        n = min(len(trend), history.num_items)
        out[:n] = trend[:n]
        return torch.from_numpy(out).float()

    def user_embeddings(self) -> torch.Tensor:
        self._state()
        if self.base_ is not None:
            return self.base_.user_embeddings()
        return torch.ones(self._num_users, 1)

    def item_embeddings(self) -> torch.Tensor:
        if self.base_ is not None:
            return self.base_.item_embeddings()
        state, params = self._state(), self.fitted_params()
        trend = trend_scores(state, params, state.last_ts)
        return torch.from_numpy(trend - trend.max()).float().unsqueeze(1)

    def hyper_parameters(self) -> dict[str, object]:
        return {"base": self._base_name(), "base_kwargs": dict(self.base_kwargs),
                "short_half_lives_days": self.short_half_lives_days,
                "long_half_lives_days": self.long_half_lives_days,
                "long_weights": self.long_weights, "covis_weights": self.covis_weights,
                "embedding_weights": self.embedding_weights,
                "content_weights": self.content_weights,
                "content": None if self.content is None else {
                    "items": self.content.num_items, "tags": len(self.content.vocabulary)},
                "window": self.window,
                "n_recent": self.n_recent, "valid_fraction": self.valid_fraction,
                "horizon_seconds": self.horizon_seconds, "k": self.k, "seed": self.seed}

    def fitted_summary(self) -> dict[str, object]:
        """What :meth:`fit` chose and measured, for version metadata and reports: the
        parameters (``fitted``), each tuning stage's validation recall (``validation``) and
        the refitted base's hyper-parameters."""
        out: dict[str, object] = {"fitted": self.fitted_params().as_dict(),
                                  "validation": dict(self.validation_)}
        if self.base_ is not None:
            out["base_hyper_parameters"] = self.base_.hyper_parameters()
        return out


def _dots(model: Recommender):
    users_emb = model.user_embeddings().numpy()
    items_emb = model.item_embeddings().numpy()

    def dots(users: np.ndarray) -> np.ndarray:
        rows = np.zeros((len(users), users_emb.shape[1]), dtype=users_emb.dtype)
        known = users < len(users_emb)
        rows[known] = users_emb[users[known]]
        return (rows @ items_emb.T).astype(np.float64)

    return dots


def _fit(model: Recommender, graph: InteractionGraph, valid: InteractionGraph | None
         ) -> Recommender:
    return model.fit(graph, valid)


def _refit(template: Recommender, early: Recommender, graph: InteractionGraph,
           fit: BaseFit = _fit) -> tuple[Recommender, int | None]:
    """``template`` refitted on ``graph`` with the epoch count validation chose for
    ``early`` (as ``streamrec retrain`` refits its model), and that count."""
    refit = copy.deepcopy(template)
    history = getattr(early, "history_", None)
    best = getattr(history, "best_epoch", None) if history is not None else None
    epochs = None
    if best and hasattr(refit, "epochs"):
        epochs = max(1, int(best))
        refit.epochs = epochs  # type: ignore[attr-defined]
    return fit(refit, graph, None), epochs

