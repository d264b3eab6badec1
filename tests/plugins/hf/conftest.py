"""modelport-hf's tests run with core and modelport-hf only: an architecture comes from here."""

from __future__ import annotations

import pytest

from modelport import hookimpl
from modelport.pipeline import WeightReport
from modelport.testing import registered_plugin
from modelport.types import ArchitectureChoice


class RecordingModel:
    """A model implementation that keeps every weight it is given."""

    def __init__(self, hf_config):
        self.hf_config = hf_config
        self.weights = {}

    @classmethod
    def from_config(cls, hf_config, *, dtype, device):
        return cls(hf_config)

    def load_weights(self, weights):
        for name, tensor in weights:
            self.weights[name] = tensor
        return WeightReport(loaded=tuple(sorted(self.weights)))


class AnyArchitecture:
    """Answers architecture selection for every config (trylast), so hf tests need no backend."""

    @hookimpl(trylast=True)
    def modelport_select_architecture(self, hf_config, model_impl, registry):
        names = getattr(hf_config, "architectures", None) or ["Unknown"]
        return ArchitectureChoice(names[0], "native", f"{__name__}:RecordingModel")


@pytest.fixture(autouse=True)
def hf_only(_modelport_isolation, monkeypatch):
    """modelport-hf and core, nothing else installed, plus the recording architecture."""
    from modelport.plugins import get_host, reset_host

    monkeypatch.setenv("MODELPORT_PLUGINS", "modelport-hf")
    reset_host()
    with registered_plugin(AnyArchitecture(), "any-architecture", host=get_host()):
        yield
