"""Fixtures of modelport-ray's tests: one local Ray cluster per test module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

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
