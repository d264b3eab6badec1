"""A native model implementation for tests: records how it was built and loaded."""

from __future__ import annotations

from modelport.pipeline import WeightReport


class ToyModel:
    """Keeps the arguments it was built with, so tests can assert on them."""

    def __init__(self, hf_config, dtype, device):
        self.hf_config = hf_config
        self.dtype = dtype
        self.device = device
        self.weights = {}

    @classmethod
    def from_config(cls, hf_config, *, dtype, device):
        return cls(hf_config, dtype, device)

    def load_weights(self, weights):
        for name, tensor in weights:
            self.weights[name] = tensor
        return WeightReport(loaded=tuple(sorted(self.weights)), missing=("embed.weight",) if not self.weights else ())
