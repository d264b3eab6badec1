"""The ``modelport`` pytest plugin: isolation and fixtures for modelport and its plugins.

Isolation: every test runs against a fresh process-wide plugin host that
loads core's built-ins plus only the entry-point plugins listed in the
``modelport_plugins`` ini option (default: none), in strict mode. A plugin that
is merely installed is never seen. Set ``modelport_isolation = false`` to use
the environment's plugins unchanged.

Fixtures: ``modelport_host`` (the isolated host), ``tiny_model`` (a factory
around :func:`~modelport.testing.make_tiny_model` writing under ``tmp_path``),
``plugin_distribution`` (a factory for throwaway installed distributions,
removed after the test), ``hub_server`` (a local Hugging Face Hub, with the
environment pointing the Hugging Face client and cache at it), ``modelscope_server``
(a local ModelScope, with the environment pointing the modelscope client and
cache at it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelport import plugins as _plugins
from modelport.testing.distributions import PluginDistribution, make_plugin_distribution
from modelport.testing.hub_server import HubServer
from modelport.testing.models import make_tiny_model
from modelport.testing.modelscope_server import ModelScopeServer


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


#: Environment variables the ``hub_server`` fixture clears, so no user setting leaks into a test.
_HUB_ENV_CLEARED = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HUGGINGFACE_HUB_CACHE",
)


@pytest.fixture
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A running local Hugging Face Hub (:class:`~modelport.testing.hub_server.HubServer`), stopped after the test.

    For the test's duration ``HF_ENDPOINT`` points at it, ``HF_HOME`` and
    ``HF_HUB_CACHE`` at fresh folders under ``tmp_path`` (``hf_home`` and
    ``hf_home/hub``), and ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` are unset. Code
    that reads these when it runs (as ``modelport-hf`` does) talks to the
    server; ``huggingface_hub`` itself reads them once, when first imported, so
    pass ``endpoint=hub_server.url`` to its functions when calling them directly.
    """
    home = tmp_path / "hf_home"
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(home))
        monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        for name in _HUB_ENV_CLEARED:
            monkeypatch.delenv(name, raising=False)
        yield server


#: Environment variables the ``modelscope_server`` fixture clears, so no user setting leaks into a test.
_MODELSCOPE_ENV_CLEARED = (
    "MODELSCOPE_API_TOKEN",
    "MODELSCOPE_DOMAIN",
    "MODELPORT_USE_MODELSCOPE",
    "VLLM_USE_MODELSCOPE",
    "HF_HUB_OFFLINE",
    "MODELSCOPE_DOWNLOAD_INTER_CLOUD_REGIONS",
)


def _forget_modelscope_config() -> None:
    # The modelscope client builds one process-wide configuration from the environment, on first use; forgetting
    # it makes the next use read this test's environment.
    import sys

    config = sys.modules.get("modelscope_hub.config")
    reset = getattr(config, "set_default_config", None)
    if callable(reset):
        reset(None)


@pytest.fixture
def modelscope_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelScopeServer]:
    """A running local ModelScope (:class:`~modelport.testing.modelscope_server.ModelScopeServer`), stopped after.

    For the test's duration ``MODELSCOPE_ENDPOINT`` points at it, ``MODELSCOPE_CACHE``
    and ``MODELSCOPE_HOME`` at fresh folders under ``tmp_path`` (``modelscope_cache``
    and ``modelscope_home``), the client's intra-cloud region probe is off
    (``MODELSCOPE_DOWNLOAD_INTRA_CLOUD=false``), and ``MODELSCOPE_API_TOKEN``,
    ``MODELPORT_USE_MODELSCOPE``, ``VLLM_USE_MODELSCOPE`` and ``HF_HUB_OFFLINE`` are
    unset. The client's process-wide configuration is forgotten before and after, so
    it reads this environment.
    """
    with ModelScopeServer() as server:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", server.url)
        monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "modelscope_cache"))
        monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "modelscope_home"))
        monkeypatch.setenv("MODELSCOPE_DOWNLOAD_INTRA_CLOUD", "false")
        for name in _MODELSCOPE_ENV_CLEARED:
            monkeypatch.delenv(name, raising=False)
        _forget_modelscope_config()
        yield server
    _forget_modelscope_config()
