"""Layers reading one input (q, k, v; gate, up) share one weight tensor, so one product serves them all."""

from __future__ import annotations

import pytest
import torch
from native_harness import tiny_config

import modelport.models.linear as linear_module
from modelport.models.linear import Linear, fuse_rows, stacked_linear
from modelport.models.llama import LlamaForCausalLM, Qwen2ForCausalLM


def _layers(bias: bool) -> tuple[Linear, ...]:
    torch.manual_seed(0)
    return tuple(Linear(48, rows, bias=bias) for rows in (32, 16, 16))


def _products(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of each product ``stacked_linear`` makes through ``linear`` (its weight's row count)."""
    seen: list[int] = []
    real = linear_module.linear

    def counting(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        seen.append(int(weight.shape[0]))
        return real(x, weight, bias)

    monkeypatch.setattr(linear_module, "linear", counting)
    return seen


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 5])
def test_fused_layers_make_one_product_with_each_layers_own_output(bias, rows, monkeypatch):
    layers = _layers(bias)
    x = torch.randn(rows, 48)
    with torch.no_grad():
        expected = [layer(x) for layer in layers]
        before = [dict(layer.named_parameters()) for layer in layers]
        assert fuse_rows(layers)
        for layer, params in zip(layers, before, strict=True):
            assert dict(layer.named_parameters()).keys() == params.keys()
            assert all(torch.equal(layer.get_parameter(n), p) for n, p in params.items())
        seen = _products(monkeypatch)
        got = stacked_linear(x, layers)
    assert seen == [64]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_weight_replaced_after_fusing_runs_the_layers_one_by_one(monkeypatch):
    layers = _layers(True)
    x = torch.randn(3, 48)
    with torch.no_grad():
        fuse_rows(layers)
        layers[1].weight = torch.nn.Parameter(torch.randn(16, 48))
        expected = [layer(x) for layer in layers]
        seen = _products(monkeypatch)
        got = stacked_linear(x, layers)
    assert seen == [32, 16, 16]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [LlamaForCausalLM, Qwen2ForCausalLM])
def test_a_loaded_model_has_each_layers_qkv_and_gate_up_in_one_tensor(cls):
    config = tiny_config("qwen2" if cls is Qwen2ForCausalLM else "llama")
    source = cls.from_config(config, dtype="float32", device="cpu")
    source.load_weights([])
    state = {k: v.detach().clone() for k, v in source.state_dict().items()}
    model = cls.from_config(config, dtype="float32", device="cpu")
    model.load_weights(state.items())
    assert all(torch.equal(model.get_parameter(name), value) for name, value in state.items())
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        groups = [(attn.q_proj, attn.k_proj, attn.v_proj), (mlp.gate_proj, mlp.up_proj)]
        names = ["weight", "bias"] if cls is Qwen2ForCausalLM else ["weight"]
        for group in groups:
            for name in names if group[0] is attn.q_proj else ["weight"]:
                tensors = [layer.get_parameter(name) for layer in group]
                assert linear_module._adjacent_rows(tensors) is not None, name


@pytest.mark.parametrize("rotary_dim", [8, 4])
def test_q_and_k_adjacent_in_one_output_are_rotated_as_each_alone(rotary_dim):
    from modelport.models.rope import Rotation

    tokens, dim = 3, 8
    out = torch.randn(tokens, (4 + 2 + 2) * dim)
    q, k = out[:, : 4 * dim].view(tokens, 4, dim), out[:, 4 * dim : 6 * dim].view(tokens, 2, dim)
    angles = torch.randn(tokens, 1, rotary_dim)
    rotation = Rotation(angles.cos(), angles.sin(), rotary_dim)

    def reference(x: torch.Tensor) -> torch.Tensor:  # transformers' rotate_half formula
        r, passed = x[..., :rotary_dim], x[..., rotary_dim:]
        half = rotary_dim // 2
        turned = torch.cat((-r[..., half:], r[..., :half]), dim=-1)
        return torch.cat((r * rotation.cos + turned * rotation.sin, passed), dim=-1)

    pair = rotation.apply_pair(q, k)
    alone = rotation.apply_pair(q.contiguous(), k.contiguous())
    for got, other, x in zip(pair, alone, (q, k), strict=True):
        assert torch.equal(got, reference(x)) and torch.equal(other, reference(x))
