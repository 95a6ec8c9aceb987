"""The demo runs end to end on a small stream against the real local broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from streamrec.demo import DemoConfig, run_demo

pytestmark = pytest.mark.integration


def test_demo_small(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    cfg = DemoConfig(events=3000, epochs=2, model="mf", store=f"sqlite:///{tmp_path / 'd.db'}",
                     out=tmp_path / "report", bootstrap=broker.bootstrap,
                     topic="demo-test", max_poll_interval_ms=2000)
    summary = run_demo(cfg, Console(quiet=True))
    steps = [row[0] for row in summary.rows]
    assert steps == ["produce", "ingest", "retrain", "live loop", "evaluate"]
    assert "stored 3,000" in summary.rows[1][2]
    assert (tmp_path / "report" / "metrics.json").exists()
