"""A self-contained toy format and a native toy model, so core's tests need no format plugin.

``toy.json`` holds LlamaConfig fields; ``toy-tokenizer.txt`` marks a tokenizer;
weights are never read (the toy format answers only ``dummy``). These are
real plugin objects registered through the real host, like a third party's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelport import hookimpl
from modelport.pipeline import WeightReport
from modelport.types import Decision, TokenizerSpec, WeightFiles


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


class ToyFormat:
    """Reads toy.json into a transformers LlamaConfig."""

    @hookimpl
    def modelport_register_config_formats(self, register):
        register("toy", "toy.json holding LlamaConfig fields")

    @hookimpl
    def modelport_detect_config_format(self, source, options):
        return Decision("toy", "toy.json present") if source.exists("toy.json") else None

    @hookimpl
    def modelport_parse_config(self, source, config_format, options, registry):
        if config_format != "toy":
            return None
        from transformers import LlamaConfig

        data = json.loads(source.fetch("toy.json").read_text())
        cls = registry.config_class(data.get("model_type", "")) or LlamaConfig
        return cls(**data)

    @hookimpl
    def modelport_register_tokenizer_modes(self, register):
        register("toy")

    @hookimpl
    def modelport_resolve_tokenizer(self, source, hf_config, options):
        if source.exists("toy-tokenizer.txt"):
            return TokenizerSpec("toy", source, ("toy-tokenizer.txt",), "toy tokenizer file")
        return None

    @hookimpl
    def modelport_load_tokenizer(self, spec, options):
        return spec.source.fetch("toy-tokenizer.txt").read_text().split() if spec.mode == "toy" else None

    @hookimpl
    def modelport_register_load_formats(self, register):
        register("dummy", "random weights")

    @hookimpl
    def modelport_select_weight_files(self, source, config_format, hf_config, options):
        if options.load_format in ("auto", "dummy"):
            return WeightFiles("dummy", source, (), None, "toy models have no weights")
        return None

    @hookimpl
    def modelport_iter_weights(self, weights, hf_config, options):
        return iter(()) if weights.load_format == "dummy" else None


def write_toy_model(folder: Path, **fields: Any) -> Path:
    """A toy model folder: toy.json plus a tokenizer marker."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
        "max_position_embeddings": 512,
    }
    data.update(fields)
    (folder / "toy.json").write_text(json.dumps(data))
    (folder / "toy-tokenizer.txt").write_text("hello world")
    return folder


class ToyArchitectures:
    """Registers a native LlamaForCausalLM backed by tests/core/toy_model.py."""

    @hookimpl
    def modelport_register_architectures(self, register):
        register("LlamaForCausalLM", "toy_model:ToyModel", impl="native")
