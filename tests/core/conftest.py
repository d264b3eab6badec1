"""Fixtures for core's tests: core's built-ins only, plus the toy format of toy_model.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from toy_model import ToyArchitectures, ToyFormat, write_toy_model

from modelport.testing import registered_plugin


@pytest.fixture(autouse=True)
def _core_only(_modelport_isolation, monkeypatch):
    """Core's tests see core's built-ins and nothing installed, whatever the environment holds."""
    from modelport.plugins import reset_host

    monkeypatch.setenv("MODELPORT_PLUGINS", "")
    reset_host()


@pytest.fixture
def toy(modelport_host):
    """The toy format plugin, registered on the isolated host for this test."""
    with registered_plugin(ToyFormat(), "toy-format", host=modelport_host):
        yield modelport_host


@pytest.fixture
def toy_native(toy):
    """The toy format plus a native toy architecture."""
    with registered_plugin(ToyArchitectures(), "toy-architectures", host=toy):
        yield toy


@pytest.fixture
def toy_model(tmp_path):
    """Factory writing a toy model folder under tmp_path."""

    def factory(name: str = "toy", **fields: Any) -> Path:
        return write_toy_model(tmp_path / name, **fields)

    return factory
