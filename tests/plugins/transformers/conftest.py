"""Shared fixtures of modelport-transformers' tests."""

from __future__ import annotations

import pytest

import modelport


@pytest.fixture
def hf_and_backend(monkeypatch):
    """Only modelport-hf and modelport-transformers answer, in a fresh plugin host (reset again afterwards)."""
    monkeypatch.setenv("MODELPORT_PLUGINS", "modelport-hf,modelport-transformers")
    modelport.plugins.reset_host()
    yield
    modelport.plugins.reset_host()
