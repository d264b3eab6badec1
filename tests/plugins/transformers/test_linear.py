"""The backend's float32 CPU linear layers: core's oneDNN kernel, a packed weight for products of many rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modelport_transformers import linear as backend_linear
from modelport_transformers.model import TransformersModel


def _neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=50,
        architectures=["GPTNeoXForCausalLM"],
    )
    torch.manual_seed(0)
    reference = GPTNeoXForCausalLM(config).eval()
    model = TransformersModel.from_config(config, dtype="float32", device="cpu")
    model.load_weights(reference.state_dict().items())
    return model, reference


def test_linear_layers_run_on_the_packed_weight_from_eight_rows_and_agree_with_f_linear():
    if not backend_linear.packed_float32_works():
        pytest.skip("oneDNN cannot pack float32 weights here")
    model, reference = _neox()
    layer = model.module.gpt_neox.layers[0].mlp.dense_h_to_4h
    assert type(layer).__name__ == "CoreLinear" and isinstance(layer, torch.nn.Linear)
    few, many = torch.randn(backend_linear.PACKED_MIN_ROWS - 1, 32), torch.randn(3, 5, 32)  # 15 rows
    with torch.no_grad():
        got_few = layer(few)
        assert layer not in backend_linear._packed  # fewer rows: the dense weight, no copy made
        got_many = layer(many)
        assert layer in backend_linear._packed
        assert (got_few - F.linear(few, layer.weight, layer.bias)).abs().max() < 1e-5
        assert got_many.shape == (3, 5, 64)
        assert (got_many - F.linear(many, layer.weight, layer.bias)).abs().max() < 1e-5
        ids = torch.tensor([[4, 8, 15, 16, 23, 42, 7, 1, 9, 30]])  # 10 rows: every layer packed
        assert (model.forward(ids) - reference(ids).logits).abs().max() < 1e-5


def test_a_weight_changed_in_place_or_replaced_is_packed_again():
    if not backend_linear.packed_float32_works():
        pytest.skip("oneDNN cannot pack float32 weights here")
    model, _ = _neox()
    layer = model.module.gpt_neox.layers[0].mlp.dense_4h_to_h
    x = torch.randn(12, 64)
    with torch.no_grad():
        layer(x)
        layer.weight.mul_(2.0)  # in place: same storage, new version
        assert (layer(x) - F.linear(x, layer.weight, layer.bias)).abs().max() < 1e-5
        layer.weight = torch.nn.Parameter(torch.randn(32, 64))  # replaced: new storage
        assert (layer(x) - F.linear(x, layer.weight, layer.bias)).abs().max() < 1e-5
