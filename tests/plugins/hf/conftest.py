"""modelport-hf's tests run with core and modelport-hf only: an architecture comes from here."""

from __future__ import annotations

import pytest

from modelport import hookimpl
from modelport.testing import registered_plugin
from modelport.types import ArchitectureChoice


class AnyArchitecture:
    """Answers architecture selection first for every config, so hf tests need no backend and see every tensor."""

    @hookimpl(tryfirst=True)
    def modelport_select_architecture(self, hf_config, model_impl, registry):
        names = getattr(hf_config, "architectures", None)
        if not names:
            return None  # like a real registry: nothing to look up
        return ArchitectureChoice(names[0], "native", "hf_test_models:RecordingModel")


@pytest.fixture(autouse=True)
def hf_only(_modelport_isolation, monkeypatch):
    """modelport-hf and core, nothing else installed, plus the recording architecture."""
    from modelport.plugins import get_host, reset_host

    monkeypatch.setenv("MODELPORT_PLUGINS", "modelport-hf")
    reset_host()
    with registered_plugin(AnyArchitecture(), "any-architecture", host=get_host()):
        yield


@pytest.fixture
def tiny_repo(hub_server, tiny_model):
    """A tiny model (the kit's, with tokenizer and weights) served by the local Hub as ``org/tiny``."""
    folder = tiny_model()
    repo = hub_server.add_repo("org/tiny", folder)
    repo.folder = folder
    return repo
