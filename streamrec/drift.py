"""Online drift watch on the prequential hit rate: was each new event's item in the user's
top-K just before it? A drop detected by ADWIN can ask the scheduler for an early retrain.

:class:`PrequentialDrift` holds the state and is fed one event (or one 0/1 hit) at a time;
:class:`DriftHook` adapts it to the ingest loop's per-batch hook.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from river.drift import ADWIN

from stream.retry import RetryPolicy

log = logging.getLogger(__name__)

TopK = Callable[[str], Collection[str]]


class PrequentialDrift:
    """Prequential hit@K fed to ADWIN; a detected drop is logged and, if ``enabled``, passed to
    ``on_drift(reason)`` (e.g. :meth:`streamrec.scheduler.RetrainScheduler.trigger_early`).

    Args:
        top_k: ``user_id -> item ids`` the model would recommend now (see :func:`service_top_k`);
            only needed by :meth:`observe`.
        k: the K of the hit rate, for the log lines and :func:`service_top_k` (default 20).
        delta: ADWIN's confidence (default 0.002; smaller = fewer, surer alarms).
        on_drift: called with a reason when the hit rate drops and ``enabled``.
        enabled: call ``on_drift`` (default False: watch and log only).
        sample_every: evaluate one event in this many (default 1 = all).
        cooldown: scored events after a call of ``on_drift`` during which further drops are
            logged but not passed on (default 1000; one change often trips ADWIN repeatedly).

    >>> hits = [1] * 1000 + [0] * 1000
    >>> calls = []
    >>> drift = PrequentialDrift(on_drift=calls.append, enabled=True)
    >>> for h in hits:
    ...     _ = drift.update(h)
    >>> drift.detections >= 1, len(calls) >= 1, drift.hit_rate < 0.5
    (True, True, True)
    """

    def __init__(self, top_k: TopK | None = None, *, k: int = 20, delta: float = 0.002,
                 on_drift: Callable[[str], Any] | None = None, enabled: bool = False,
                 sample_every: int = 1, cooldown: int = 1000) -> None:
        if sample_every < 1:
            raise ValueError(f"sample_every must be >= 1, got {sample_every}")
        self.top_k = top_k
        self.k = k
        self.delta = delta
        self.on_drift = on_drift
        self.enabled = enabled
        self.sample_every = sample_every
        self.cooldown = cooldown
        self._last_call: int | None = None
        self._adwin = ADWIN(delta=delta)
        self._seen = 0
        self.observed = 0
        self.hits = 0
        self.detections = 0
        self.drops = 0

    def __repr__(self) -> str:
        return (f"PrequentialDrift(k={self.k}, delta={self.delta}, enabled={self.enabled}, "
                f"sample_every={self.sample_every})")

    @property
    def hit_rate(self) -> float:
        """ADWIN's current estimate of hit@K (the mean over its adaptive window)."""
        return float(self._adwin.estimation)

    def observe(self, user_id: str, item_id: str) -> bool | None:
        """Score one event against the current top-K; None when not sampled or unscorable
        (no version served yet, unknown user)."""
        if self.top_k is None:
            raise ValueError("observe needs a top_k callable; pass top_k= or use update(hit)")
        self._seen += 1
        if (self._seen - 1) % self.sample_every:
            return None
        try:
            hit = item_id in self.top_k(user_id)
        except LookupError as exc:  # NoActiveVersionError, UnknownUser
            log.debug("drift: event of %s not scored: %s", user_id, exc)
            return None
        self.update(hit)
        return hit

    def update(self, hit: bool | int) -> bool:
        """Feed one 0/1 hit; True when a drop of the hit rate was detected now."""
        before = float(self._adwin.estimation)
        self._adwin.update(int(bool(hit)))
        self.observed += 1
        self.hits += int(bool(hit))
        if not self._adwin.drift_detected:
            return False
        self.detections += 1
        after = float(self._adwin.estimation)
        if after >= before:
            log.info("drift: hit@%d rose from %.3f to %.3f (no action)", self.k, before, after)
            return False
        self.drops += 1
        reason = (f"hit@{self.k} dropped from {before:.3f} to {after:.3f} "
                  f"after {self.observed} scored events")
        cooling = self._last_call is not None and self.observed - self._last_call < self.cooldown
        if self.enabled and self.on_drift is not None and not cooling:
            self._last_call = self.observed
            log.warning("drift: %s; requesting an early retrain", reason)
            self.on_drift(reason)
        else:
            why = "cooling down" if cooling and self.enabled else "early retrain disabled"
            log.warning("drift: %s (%s)", reason, why)
        return True


def service_top_k(service: Any, k: int = 20) -> TopK:
    """``user_id -> top-k item ids`` from a :class:`~streamrec.queries.QueryService`.

    Seen items are not excluded: the ingest hook runs after the batch is stored, so the
    event's own item is "seen" by then. Unknown users (popular fallback) count as LookupError,
    so only users the served version knows are scored.
    """
    from streamrec.queries import UnknownUser

    def top_k(user_id: str) -> set[str]:
        result = service.recommend(user_id, k, exclude_seen=False)
        if result["fallback"]:
            raise UnknownUser(user_id)
        return {row["item_id"] for row in result["items"]}

    return top_k


class DriftHook:
    """The ingest loop's per-batch hook: score the batch's new events, then refresh the query
    service when a new version was activated.

    Args:
        drift: the watcher (its ``top_k`` should read ``service``).
        service: the :class:`~streamrec.queries.QueryService` behind ``top_k``.
    """

    def __init__(self, drift: PrequentialDrift, service: Any) -> None:
        self.drift = drift
        self.service = service
        self._version: int | None = None

    def __call__(self, result: Any) -> None:
        """``result``: the batch's :class:`~store.graph.WriteResult` (dense indices)."""
        from store.embedding_schema import NoActiveVersionError

        active = self.service.embeddings.active_version()
        if active is None or result.stored == 0:
            return
        try:
            if active.id != self._version:
                self.service.refresh()
                self._version = active.id
            served = self.service.served
        except NoActiveVersionError:
            return
        users, items = served.user_ids, served.item_ids
        for u, i in zip(result.user.tolist(), result.item.tolist(), strict=True):
            if u < len(users) and i < len(items):  # nodes new since the refresh: unscorable
                self.drift.observe(users[u], items[i])


def chain(*hooks: Callable[[Any], Any] | None) -> Callable[[Any], None]:
    """One per-batch hook calling each non-None hook in order (e.g. drift, then live)."""
    active = [h for h in hooks if h is not None]

    def run(result: Any) -> None:
        for hook in active:
            hook(result)

    return run


def retried(hook: Callable[[Any], Any], policy: RetryPolicy,
            should_stop: Callable[[], bool] = lambda: False) -> Callable[[Any], None]:
    """``hook`` with each call retried through database outages by ``policy`` (the event
    write's back-off), so an outage in an update hook waits instead of ending ingest; a
    retried call runs the hook again from its start."""

    def run(result: Any) -> None:
        policy.call(lambda: hook(result), should_stop=should_stop)

    return run
