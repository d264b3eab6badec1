"""modelport-mistral's tests run with core, modelport-hf and modelport-mistral only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelport.testing import make_tiny_model
from modelport.testing.mistral_files import make_mistral_folder

pytest.importorskip("mistral_common", reason="mistral-common is not installed")
pytest.importorskip("modelport_hf", reason="modelport-hf is not installed")


@pytest.fixture(autouse=True)
def mistral_only(_modelport_isolation, monkeypatch):
    """The host sees core's built-ins, modelport-hf and modelport-mistral."""
    from modelport.plugins import reset_host

    monkeypatch.setenv("MODELPORT_PLUGINS", "modelport-hf,modelport-mistral")
    reset_host()
    yield
    reset_host()


@pytest.fixture
def mistral_model(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """Factory: ``mistral_model(name, architecture="llama", **kit options)`` -> ``(hf folder, mistral folder)``.

    The Hugging Face folder is the kit's tiny model; the Mistral folder is
    written from it by :func:`make_mistral_folder` (``tokenizer``, ``weights``,
    ``shards``, ``params``, ``drop_params``, ``same_folder`` to write both layouts
    into one folder).
    """

    def factory(
        name: str = "model", architecture: str = "llama", *, same_folder: bool = False, sizes: Any = None, **kwargs: Any
    ) -> tuple[Path, Path]:
        hf = make_tiny_model(tmp_path / f"{name}-hf", architecture, **(sizes or {}))
        target = hf if same_folder else tmp_path / f"{name}-mistral"
        return hf, make_mistral_folder(hf, target, **kwargs)

    return factory
