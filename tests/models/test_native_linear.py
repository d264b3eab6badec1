"""The native models' linear layer: oneDNN on the CPU (packed weights in bfloat16), F.linear otherwise, same results."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F

import modelport.models.linear as linear_module
from modelport.models.linear import (
    PACKED_MAX_ROWS,
    Linear,
    linear,
    onednn_linear_works,
    packed_linear_works,
    stacked_linear,
)


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
    x = torch.randn(5, 32, dtype=torch.float64)
    weight = torch.randn(8, 32, dtype=torch.float64)
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


needs_packing = pytest.mark.skipif(
    not packed_linear_works(torch.bfloat16), reason="oneDNN cannot pack bfloat16 weights on this CPU"
)


@needs_packing
@pytest.mark.parametrize("rows", [0, 1, 5, PACKED_MAX_ROWS, PACKED_MAX_ROWS + 1])
def test_bfloat16_linear_through_packed_weights_equals_f_linear(rows, monkeypatch):
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 64, generator=generator).bfloat16()
    weight = torch.randn(48, 64, generator=generator).bfloat16()
    bias = torch.randn(48, generator=generator).bfloat16()
    with torch.no_grad():
        packed = linear(x, weight, bias)
        monkeypatch.setattr(linear_module, "PACKED_MAX_ROWS", -1)  # the dense path, for comparison
        torch.testing.assert_close(packed, linear(x, weight, bias), rtol=0, atol=0)
        torch.testing.assert_close(packed, F.linear(x, weight, bias), rtol=0, atol=0)


@needs_packing
def test_a_weight_is_packed_once_and_again_when_replaced():
    generator = torch.Generator().manual_seed(1)
    layer = Linear(64, 32, bias=False, dtype=torch.bfloat16)
    x = torch.randn(2, 64, generator=generator).bfloat16()
    with torch.no_grad():
        first = layer(x)
        packed = linear_module._packed[(id(layer.weight),)]
        layer(x)
        assert linear_module._packed[(id(layer.weight),)] is packed  # reused, not remade
        layer.weight.data = torch.randn(32, 64, generator=generator).bfloat16()  # new storage: repacked
        second = layer(x)
    assert not torch.equal(first, second)
    torch.testing.assert_close(second, F.linear(x, layer.weight), rtol=0, atol=0)


def test_a_freed_weight_drops_its_packed_copy():
    if not packed_linear_works(torch.bfloat16):
        pytest.skip("oneDNN cannot pack bfloat16 weights on this CPU")
    weight = torch.randn(16, 32).bfloat16()
    key = (id(weight),)
    with torch.no_grad():
        linear(torch.randn(1, 32).bfloat16(), weight)
    assert key in linear_module._packed
    del weight
    gc.collect()
    assert key not in linear_module._packed


@needs_packing
@pytest.mark.parametrize("bias", [False, True])
def test_stacked_layers_give_each_layers_own_output(bias):
    torch.manual_seed(0)
    layers = [Linear(64, rows, bias=bias, dtype=torch.bfloat16) for rows in (48, 16, 16)]
    x = torch.randn(3, 64).bfloat16()
    with torch.no_grad():
        outputs = stacked_linear(x, layers)
        assert [tuple(o.shape) for o in outputs] == [(3, 48), (3, 16), (3, 16)]
        for out, layer in zip(outputs, layers, strict=True):
            torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)


def test_stacked_layers_of_another_kind_or_dtype_run_one_by_one():
    class Doubled(Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        layers = [Linear(32, 8, dtype=dtype), Doubled(32, 8, dtype=dtype)]
        x = torch.randn(2, 32).to(dtype)
        with torch.no_grad():
            plain, doubled = stacked_linear(x, layers)
            torch.testing.assert_close(plain, F.linear(x, layers[0].weight, layers[0].bias), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(doubled, 2 * F.linear(x, layers[1].weight, layers[1].bias), rtol=1e-5, atol=1e-5)


def _within_one_bfloat16_rounding(got: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias=None) -> None:
    """``got`` is the exact product rounded to bfloat16, give or take one bfloat16 step (float32 sums)."""
    exact = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    step = 2.0**-7 * exact.abs().clamp_min(2.0**-20)  # one bfloat16 step at each value (8 significant bits)
    assert got.dtype is torch.bfloat16
    assert bool(((got.double() - exact).abs() <= step + 1e-6 * weight.shape[1]).all())


@pytest.mark.parametrize("rows", [1, 32])
def test_bfloat16_linear_without_bfloat16_kernels_matches_f_linear(rows, monkeypatch):
    """The CPU path without bfloat16 kernels: F.linear for few rows, float32 products of the upcast weight for more."""
    monkeypatch.setattr(linear_module, "bfloat16_kernels", lambda: False)  # as on an AVX2-only CPU
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 96, generator=generator).bfloat16()
    weight = torch.randn(40, 96, generator=generator).bfloat16()
    bias = torch.randn(40, generator=generator).bfloat16()
    with torch.no_grad():
        got = linear(x, weight, bias)
        assert got.shape == (rows, 40) and got.is_contiguous()
        if rows < linear_module.UPCAST_MIN_ROWS:
            assert torch.equal(got, F.linear(x, weight, bias))
        else:
            assert torch.equal(got, linear_module._upcast_product(x, (weight,), (bias,)))
        torch.testing.assert_close(got, F.linear(x, weight, bias))  # bfloat16's default tolerances
        _within_one_bfloat16_rounding(got, x, weight, bias)


def test_bfloat16_kernels_are_what_torch_reports():
    assert linear_module.bfloat16_kernels() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@pytest.mark.parametrize("bias", [False, True])
def test_upcast_stacked_layers_in_chunks_give_each_layers_own_output(bias, monkeypatch):
    monkeypatch.setattr(linear_module, "bfloat16_kernels", lambda: False)
    monkeypatch.setattr(linear_module, "UPCAST_CHUNK", 20 * 64)  # chunks of 20 rows: 48 | 16 | 16 split across
    torch.manual_seed(0)
    layers = [Linear(64, rows, bias=bias, dtype=torch.bfloat16) for rows in (48, 16, 16)]
    x = torch.randn(9, 64).bfloat16()
    with torch.no_grad():
        outputs = stacked_linear(x, layers)
        assert [tuple(o.shape) for o in outputs] == [(9, 48), (9, 16), (9, 16)]
        for out, layer in zip(outputs, layers, strict=True):
            torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias))
            _within_one_bfloat16_rounding(out, x, layer.weight, layer.bias)
            torch.testing.assert_close(out, layer(x))  # one layer alone: the same path, chunked its own way


def test_upcast_buffer_made_in_inference_mode_serves_outside_it(monkeypatch):
    """The per-thread buffer is a normal tensor: a first call in inference mode does not break later calls."""
    import threading

    monkeypatch.setattr(linear_module, "bfloat16_kernels", lambda: False)
    x = torch.randn(8, 32).bfloat16()
    weight = torch.randn(24, 32).bfloat16()
    results, errors = [], []

    def run() -> None:  # a fresh thread: no buffer yet
        try:
            with torch.inference_mode():
                results.append(linear(x, weight))
            with torch.no_grad():
                results.append(linear(x, weight))
        except Exception as error:  # reported below
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert errors == []
    for got in results:
        torch.testing.assert_close(got, F.linear(x, weight))


def test_bfloat16_inputs_needing_gradients_take_f_linear_exactly(monkeypatch):
    monkeypatch.setattr(linear_module, "bfloat16_kernels", lambda: False)
    x = torch.randn(16, 32).bfloat16().requires_grad_()
    weight = torch.randn(8, 32).bfloat16()
    out = linear(x, weight)
    out.float().sum().backward()
    assert torch.equal(out, F.linear(x, weight)) and x.grad is not None
