"""modelport-ray installs, is discovered, registers the ``ray`` distributed backend, and imports Ray lazily."""

from __future__ import annotations

import importlib.metadata

from modelport.distributed.launcher import WorkerLauncher
from modelport.plugins import get_host
from modelport.testing import describe_installed, modules_imported_by_loading

DISTRIBUTION = "modelport-ray"


def test_the_plugin_is_discovered_with_its_distribution_version_and_one_hook():
    described = describe_installed(DISTRIBUTION)
    assert described["distribution"] == DISTRIBUTION
    assert described["version"] == importlib.metadata.version(DISTRIBUTION)
    assert described["builtin"] is False
    assert described["hooks"] == ["modelport_register_distributed_backends"]
    assert described["registered"] == {"distributed_backend": ["ray"]}


def test_ray_is_a_registered_backend_whose_launcher_keeps_the_protocol():
    host = get_host()
    entry = host.registry.lookup("distributed_backend", "ray")
    assert (entry.plugin, entry.target) == (DISTRIBUTION, "modelport_ray.launcher:RayLauncher")
    assert "Ray actors" in entry.description
    assert {"mp", "ray"} <= set(host.registry.names("distributed_backend"))
    launcher = host.registry.load(entry.target)()  # constructible with no arguments, as core builds it
    assert isinstance(launcher, WorkerLauncher)


def test_loading_the_plugin_imports_neither_ray_nor_torch():
    assert modules_imported_by_loading(DISTRIBUTION, ["ray", "torch", "transformers"]) == set()
