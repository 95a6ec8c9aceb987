"""bench/gpu_check.py's comparison: what counts as the same result on CPU and CUDA."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_equal_results_pass_and_drift_fails(gpu_check: ModuleType) -> None:
    rng = np.random.default_rng(0)
    a = {"loss": np.array([1.0, 0.5]), "user": rng.standard_normal((20, 8))}
    ok, notes = gpu_check.compare(a, {k: v.copy() for k, v in a.items()}, 1e-6, 0.9999)
    assert ok and "max rel diff 0.00e+00" in notes
    noisy = {"loss": a["loss"] * (1 + 1e-3), "user": a["user"] + 1e-4}
    assert gpu_check.compare(a, noisy, 1e-2, 0.999)[0]  # float noise of another device
    assert not gpu_check.compare(a, noisy, 1e-5, 0.999)[0]  # beyond the tolerance
    flipped = {"loss": a["loss"], "user": -a["user"]}  # same norms, opposite directions
    ok, notes = gpu_check.compare(a, flipped, 10.0, 0.999)
    assert not ok and "user cos -1.00000" in notes


def test_ids_are_compared_by_overlap(gpu_check: ModuleType) -> None:
    ids = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert gpu_check.compare({"ids@4": ids}, {"ids@4": ids[:, ::-1]}, 0.0, 1.0)[0]
    other = ids.copy()
    other[1, 0] = 99
    ok, notes = gpu_check.compare({"ids@4": ids}, {"ids@4": other}, 0.0, 1.0)
    assert not ok and "overlap 0.8750" in notes
