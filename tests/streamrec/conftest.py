"""Fixtures shared by the streamrec tests."""

from __future__ import annotations

import threading

import pytest

from streamrec import retrain as retrain_job


@pytest.fixture
def gated_retrain(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make every retrain wait for a gate: returns ``(release, started)``; ``started`` is set
    once a retrain runs, which then blocks until the test sets ``release`` (30 s at most)."""
    release, started = threading.Event(), threading.Event()
    real = retrain_job.retrain

    def gated(*args, **kwargs):  # type: ignore[no-untyped-def]
        started.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(retrain_job, "retrain", gated)
    return release, started
