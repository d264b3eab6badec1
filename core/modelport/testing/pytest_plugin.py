"""The ``modelport`` pytest plugin: isolation and fixtures for modelport and its plugins.

Isolation: every test runs against a fresh process-wide plugin host that
loads core's built-ins plus only the entry-point plugins listed in the
``modelport_plugins`` ini option (default: none), in strict mode. A plugin that
is merely installed is never seen. Set ``modelport_isolation = false`` to use
the environment's plugins unchanged.

Fixtures: ``modelport_host`` (the isolated host), ``tiny_model`` (a factory
around :func:`~modelport.testing.make_tiny_model` writing under ``tmp_path``),
``plugin_distribution`` (a factory for throwaway installed distributions,
removed after the test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelport import plugins as _plugins
from modelport.testing.distributions import PluginDistribution, make_plugin_distribution
from modelport.testing.models import make_tiny_model


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ini options ``modelport_plugins`` and ``modelport_isolation``."""
    parser.addini(
        "modelport_plugins",
        "entry-point plugins a test may see besides core's built-ins (space separated)",
        type="args",
        default=[],
    )
    parser.addini("modelport_isolation", "isolate tests from installed plugins", type="bool", default=True)


@pytest.fixture(autouse=True)
def _modelport_isolation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if not request.config.getini("modelport_isolation"):
        yield
        return
    allowed = request.config.getini("modelport_plugins")
    monkeypatch.setenv("MODELPORT_PLUGINS", ",".join(allowed))
    monkeypatch.delenv("MODELPORT_DISABLE_PLUGINS", raising=False)
    monkeypatch.setenv("MODELPORT_STRICT_PLUGINS", "1")
    monkeypatch.delenv("MODELPORT_TRACE", raising=False)
    _plugins.reset_host()
    yield
    _plugins.reset_host()


@pytest.fixture
def modelport_host() -> _plugins.PluginHost:
    """The process-wide host for this test (isolated as configured)."""
    return _plugins.get_host()


@pytest.fixture
def tiny_model(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``tiny_model(name="model", architecture="llama", **sizes)`` writes a model under ``tmp_path``."""

    def factory(name: str = "model", architecture: str = "llama", **kwargs: Any) -> Path:
        return make_tiny_model(tmp_path / name, architecture, **kwargs)

    return factory


@pytest.fixture
def plugin_distribution(tmp_path: Path) -> Iterator[Callable[..., PluginDistribution]]:
    """Factory: ``plugin_distribution(name, code, version=...)`` writes and activates a distribution.

    Every distribution it made is deactivated after the test, and the
    process-wide host is reset so the next host rediscovers entry points.
    """
    made: list[PluginDistribution] = []

    def factory(name: str, code: str, **kwargs: Any) -> PluginDistribution:
        dist = make_plugin_distribution(tmp_path / f"site-{len(made)}", name, code, **kwargs)
        dist.activate()
        made.append(dist)
        _plugins.reset_host()
        return dist

    yield factory
    for dist in made:
        dist.deactivate()
    _plugins.reset_host()
