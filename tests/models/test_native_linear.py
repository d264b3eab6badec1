"""The native models' linear layer: oneDNN for float32 on the CPU, F.linear otherwise, same results."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modelport.models.linear import Linear, linear, onednn_linear_works


@pytest.mark.parametrize("rows", [0, 1, 7, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_float32_linear_equals_f_linear_to_rounding(rows, bias):
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 96, generator=generator)
    weight = torch.randn(40, 96, generator=generator)
    b = torch.randn(40, generator=generator) if bias else None
    with torch.no_grad():
        torch.testing.assert_close(linear(x, weight, b), F.linear(x, weight, b), rtol=1e-5, atol=1e-5)


def test_other_dtypes_and_inputs_needing_gradients_take_f_linear_exactly():
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    weight = torch.randn(8, 32, dtype=torch.bfloat16)
    assert torch.equal(linear(x, weight), F.linear(x, weight))
    x = torch.randn(5, 32, requires_grad=True)
    weight = torch.randn(8, 32)
    out = linear(x, weight)
    out.sum().backward()
    assert torch.equal(out, F.linear(x, weight)) and x.grad is not None


def test_the_module_keeps_nn_linears_parameters():
    layer = Linear(16, 4, bias=True)
    assert isinstance(layer, torch.nn.Linear)
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    x = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_onednn_is_found_where_torch_has_it():
    assert onednn_linear_works() == (
        torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )
