"""Fixtures of the modelport-cuda tests: tiny native models built in memory, and the ``gpu`` marker.

Tests marked ``gpu`` need a CUDA device and skip cleanly without one; ``nox -s gpu``
runs them (``pytest -m gpu``) where ``torch.cuda.is_available()``.
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one (nox -s gpu runs them)")


def tiny_native(architecture: str = "llama", seed: int = 0, dtype: str = "float32", **overrides: Any) -> Any:
    """A tiny native model with random weights (every parameter initialised by ``load_weights([])``), on the CPU.

    Built from a transformers config directly, so the tests need core and modelport-cuda only.
    """
    import torch
    from transformers import LlamaConfig, MistralConfig, MixtralConfig, Qwen3Config

    from modelport.models.llama import LlamaForCausalLM, MistralForCausalLM, Qwen3ForCausalLM
    from modelport.models.mixtral import MixtralForCausalLM

    config_class, model_class = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
        "mixtral": (MixtralConfig, MixtralForCausalLM),
    }[architecture]
    fields: dict[str, Any] = {
        "vocab_size": 97,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "initializer_range": 0.2,  # large enough that the random model's greedy choices are not near-ties
    }
    if architecture == "mixtral":
        fields.update(num_local_experts=4, num_experts_per_tok=2)
    fields.update(overrides)
    config = config_class(**fields)
    config.architectures = [model_class.__name__]
    torch.manual_seed(seed)
    model = model_class.from_config(config, dtype=dtype, device="cpu")
    model.load_weights([])
    return model
