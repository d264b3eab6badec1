"""A model implementation for modelport-hf's tests (a module of its own: "module:Class" targets need a unique name)."""

from __future__ import annotations

from modelport.pipeline import WeightReport


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
