"""Fixtures of modelport-ray's tests: one local Ray cluster per test module, core's tensor-parallel test harness."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

#: Core's helpers for tensor-parallel tests: the tiny models of each architecture and a paged step driver.
TP_HARNESS = Path(__file__).resolve().parents[2] / "distributed" / "tp_harness.py"

#: The CPUs of the test cluster: two ranks of one CPU each, as on the issue's "ray.init(num_cpus=2)".
CLUSTER_CPUS = 2


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local Ray cluster for the module (``ray.init(num_cpus=2)``), shut down after its last test."""
    ray = pytest.importorskip("ray", reason="modelport-ray's tests need ray (pip install 'ray>=2.40')")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=CLUSTER_CPUS, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tp_harness() -> ModuleType:
    """Core's tests/distributed/tp_harness.py (``write_tp_model``, ``TP_MODELS``, ``PagedSteps``), not a copy."""
    if "tp_harness" in sys.modules:  # core's tests imported it already (their folder is on sys.path)
        return sys.modules["tp_harness"]
    spec = importlib.util.spec_from_file_location("tp_harness", TP_HARNESS)
    assert spec is not None and spec.loader is not None, TP_HARNESS
    module = importlib.util.module_from_spec(spec)
    sys.modules["tp_harness"] = module
    spec.loader.exec_module(module)
    return module
