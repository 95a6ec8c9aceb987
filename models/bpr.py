"""The recommender shell shared by the BPR-trained embedding models (MF-BPR, LightGCN):
argument checks, the call into :func:`models.training.train_bpr`, device placement and
the cached CPU embedding tables.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from models.base import InteractionGraph, Recommender, resolve_device
from models.data_parallel import DataParallel
from models.training import TrainConfig, TrainHistory, train_bpr


class BPRRecommender(Recommender):
    """Base of recommenders trained by mini-batch BPR; subclasses build the module.

    Args:
        embedding_dim: size ``d`` of every embedding (default: ``64``).
        epochs: maximum number of passes over the distinct training edges (default: ``20``).
        batch_size: edges per Adam step (default: ``2048``).
        lr: Adam learning rate (default: ``1e-3``).
        reg_weight: L2 weight on the batch's layer-0 embeddings, divided by the batch size
            (default: ``1e-4``).
        negative_sampler: ``"uniform"``, ``"popularity"`` or ``"in_batch"``
            (default: ``"uniform"``).
        patience: evaluations without a better validation Recall@``k`` before stopping
            (default: ``3``); only used when ``fit`` gets ``valid``.
        eval_every: epochs between validation evaluations (default: ``1``).
        k: cut-off of the validation recall (default: ``20``).
        seed: the only source of randomness: initialisation, shuffling, negatives
            (default: ``0``).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:n]"``
            (default: ``"auto"``).
        progress: show a tqdm bar with the loss and the validation metric (default: ``True``).
        recency_half_life_seconds: when set, every epoch draws its training edges with
            probability halving per this age of the edge's latest event, measured from the
            newest training event (recency-weighted training); ``None`` visits every
            distinct edge once per epoch (default: ``None``).
        max_steps_per_epoch: most Adam steps an epoch takes: the batch grows past
            ``batch_size`` to ``ceil(edges / max_steps_per_epoch)`` on larger graphs; for
            models whose step costs the whole graph (LightGCN), this keeps an epoch linear
            in the graph's size instead of quadratic; ``None``: ``batch_size`` always
            (default: ``None``).

    After :meth:`fit`, ``history_`` holds the :class:`~models.training.TrainHistory`.

    >>> from models.mf import MFBPR  # a concrete subclass
    >>> MFBPR(epochs=3).hyper_parameters()["epochs"]
    3
    """

    _param_names: tuple[str, ...] = (
        "embedding_dim", "epochs", "batch_size", "lr", "reg_weight", "negative_sampler",
        "patience", "eval_every", "k", "seed", "device", "progress",
        "recency_half_life_seconds", "max_steps_per_epoch",
    )

    def __init__(
        self,
        *,
        embedding_dim: int = 64,
        epochs: int = 20,
        batch_size: int = 2048,
        lr: float = 1e-3,
        reg_weight: float = 1e-4,
        negative_sampler: str = "uniform",
        patience: int = 3,
        eval_every: int = 1,
        k: int = 20,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
        recency_half_life_seconds: float | None = None,
        max_steps_per_epoch: int | None = None,
    ) -> None:
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.embedding_dim = embedding_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.reg_weight = reg_weight
        self.negative_sampler = negative_sampler
        self.patience = patience
        self.eval_every = eval_every
        self.k = k
        self.seed = seed
        self.device = device
        self.progress = progress
        self.recency_half_life_seconds = recency_half_life_seconds
        self.max_steps_per_epoch = max_steps_per_epoch
        self._config()  # fail fast on bad arguments, before any data is seen
        resolve_device(device)
        self.module_: nn.Module | None = None
        self.history_: TrainHistory | None = None
        self._users: torch.Tensor | None = None
        self._items: torch.Tensor | None = None

    def _config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            reg_weight=self.reg_weight, negative_sampler=self.negative_sampler,
            patience=self.patience, eval_every=self.eval_every, k=self.k, seed=self.seed,
            progress=self.progress, desc=self.name,
            recency_half_life=self.recency_half_life_seconds,
            max_steps_per_epoch=self.max_steps_per_epoch,
        )

    @abstractmethod
    def build_module(
        self, graph: InteractionGraph, generator: torch.Generator, device: torch.device
    ) -> nn.Module:
        """A freshly initialised module for ``graph`` on ``device``, drawing its initial
        weights from ``generator``; ``module()`` returns the final ``([U, d], [I, d])``
        tables and ``module.batch(users, items)`` the final and layer-0 rows of a batch
        (see :mod:`models.training`)."""

    def fit(
        self, graph: InteractionGraph, valid: InteractionGraph | None = None, *,
        parallel: DataParallel | None = None,
    ) -> BPRRecommender:
        """Train on ``graph``; ``valid`` (later events) drives early stopping. ``parallel``:
        this process's place in data-parallel training (streamrec.parallel_fit runs it)."""
        if valid is not None and (
            valid.num_items != graph.num_items or valid.num_users < graph.num_users
        ):
            raise ValueError(
                "valid must share the training graph's item index space and cover its users: "
                f"got {valid.num_users}x{valid.num_items}, train {graph.num_users}x"
                f"{graph.num_items}"
            )
        device = resolve_device(self.device)
        generator = torch.Generator().manual_seed(self.seed)
        module = self.build_module(graph, generator, device)
        self.history_ = train_bpr(module, graph, self._config(), valid=valid, device=device,
                                  parallel=parallel)
        with torch.no_grad():
            users, items = module()
        self.module_ = module
        self._users = users.detach().float().cpu().contiguous()
        self._items = items.detach().float().cpu().contiguous()
        return self

    def load_fitted(self, graph: InteractionGraph, state: dict[str, torch.Tensor],
                    history: TrainHistory) -> BPRRecommender:
        """Become the model whose module, trained on ``graph``, has weights ``state`` (its
        ``state_dict``), e.g. a fit that ran in other processes; returns ``self``."""
        device = resolve_device(self.device)
        module = self.build_module(graph, torch.Generator().manual_seed(self.seed), device)
        module.load_state_dict(state)
        module.eval()
        with torch.no_grad():
            users, items = module()
        self.module_, self.history_ = module, history
        self._users = users.detach().float().cpu().contiguous()
        self._items = items.detach().float().cpu().contiguous()
        return self

    def _fitted(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._users is None or self._items is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(graph) first")
        return self._users, self._items

    def user_embeddings(self) -> torch.Tensor:
        return self._fitted()[0]

    def item_embeddings(self) -> torch.Tensor:
        return self._fitted()[1]

    def hyper_parameters(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self._param_names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper_parameters().items())
        return f"{type(self).__name__}({args})"
