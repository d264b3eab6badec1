"""modelport-modelscope's tests run with core, modelport-hf (its declared dependency) and modelport-modelscope only."""

from __future__ import annotations

import pytest

from modelport.testing.modelscope_server import ModelScopeRepo


@pytest.fixture(autouse=True)
def modelscope_only(_modelport_isolation, monkeypatch):
    """Core, modelport-hf and modelport-modelscope; nothing else installed is seen."""
    from modelport.plugins import reset_host

    monkeypatch.setenv("MODELPORT_PLUGINS", "modelport-hf,modelport-modelscope")
    reset_host()
    yield


@pytest.fixture
def tiny_ms_repo(modelscope_server, tiny_model) -> ModelScopeRepo:
    """``org/tiny`` on the local ModelScope: the kit's tiny llama plus a README and ModelScope's configuration.json."""
    folder = tiny_model()
    (folder / "README.md").write_text("# tiny\n")
    (folder / "configuration.json").write_text('{"framework": "pytorch", "task": "text-generation"}\n')
    repo = modelscope_server.add_repo("org/tiny", folder)
    repo.folder = folder  # type: ignore[attr-defined]
    return repo
