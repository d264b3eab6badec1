"""Dequantisation in torch is bit-identical to gguf-py's numpy ``dequantize`` for every type read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelport_gguf.quants import BLOCK_DEQUANTISERS, PLAIN_TYPES, dequantize

#: Where each quantised type keeps its float16 scales (byte offsets), so random blocks get finite ones.
SCALE_FIELDS = {
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q8_0": (0,),
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
    "IQ4_NL": (0,),
    "IQ4_XS": (0,),
}


def random_blocks(type_name: str, n_blocks: int, seed: int) -> np.ndarray:
    """Random bytes with finite, varied float16 scales (signs and magnitudes included)."""
    import gguf

    _, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for offset in SCALE_FIELDS[type_name]:
        scales = (rng.standard_normal(n_blocks) * 10.0 ** rng.integers(-4, 2, n_blocks)).astype(np.float16)
        raw[:, offset : offset + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw


def test_every_quantised_type_has_its_scale_fields_listed():
    assert set(SCALE_FIELDS) == set(BLOCK_DEQUANTISERS)


@pytest.mark.parametrize("type_name", sorted(BLOCK_DEQUANTISERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_dequantisation_is_bit_exact_against_gguf_py(type_name, seed):
    import gguf
    from gguf.quants import dequantize as numpy_dequantize

    qtype = gguf.GGMLQuantizationType[type_name]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    raw = random_blocks(type_name, 300, seed)
    want = numpy_dequantize(raw.reshape(-1), qtype).reshape(-1).astype(np.float32)
    got = dequantize(torch.from_numpy(raw.reshape(-1)), type_name, (300 * block,), torch.float32)
    assert got.dtype == torch.float32 and got.shape == (300 * block,)
    assert np.array_equal(got.numpy().view(np.uint32), want.view(np.uint32))


def test_chunked_dequantisation_goes_straight_to_the_target_dtype(monkeypatch):
    import modelport_gguf.quants as quants

    monkeypatch.setattr(quants, "CHUNK_ELEMENTS", 7 * 256)  # many chunks of 7 blocks, the last one partial
    raw = torch.from_numpy(random_blocks("Q4_K", 50, 3).reshape(-1))
    whole = dequantize(raw, "Q4_K", (50, 256), torch.float32)
    halves = dequantize(raw, "Q4_K", (50, 256), torch.bfloat16)
    assert halves.dtype == torch.bfloat16 and torch.equal(halves, whole.to(torch.bfloat16))


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16"])
def test_plain_types_are_reinterpreted_then_converted(type_name):
    values = torch.randn(4, 32).to(PLAIN_TYPES[type_name])
    raw = values.contiguous().view(torch.uint8).reshape(-1)
    assert torch.equal(dequantize(raw, type_name, (4, 32), torch.float32), values.to(torch.float32))


def test_bf16_matches_gguf_py():
    import gguf
    from gguf.quants import dequantize as numpy_dequantize

    raw = np.random.default_rng(0).integers(0, 256, size=512, dtype=np.uint8)
    raw[1::2] &= 0x3F  # keep exponents finite
    want = numpy_dequantize(raw, gguf.GGMLQuantizationType.BF16).reshape(-1)
    got = dequantize(torch.from_numpy(raw), "BF16", (256,), torch.float32).numpy()
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_dequantisation_into_an_existing_tensor_fills_it_in_place():
    raw = torch.from_numpy(random_blocks("Q8_0", 40, 5).reshape(-1))
    target = torch.zeros(40, 32, dtype=torch.bfloat16)
    returned = dequantize(raw, "Q8_0", (40, 32), torch.bfloat16, out=target)
    assert returned.data_ptr() == target.data_ptr()
    assert torch.equal(target, dequantize(raw, "Q8_0", (40, 32), torch.float32).to(torch.bfloat16))


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_K"])
def test_blocks_at_an_odd_address_dequantise_alike(type_name):
    """Scales are read in place where the bytes allow it, and through a copy where they start at an odd byte."""
    raw = random_blocks(type_name, 20, 7).reshape(-1)
    shifted = torch.from_numpy(np.concatenate([np.zeros(1, np.uint8), raw]))[1:]
    assert shifted.storage_offset() == 1
    block = 32 if type_name == "Q8_0" else 256
    want = dequantize(torch.from_numpy(raw), type_name, (20 * block,), torch.float32)
    assert torch.equal(dequantize(shifted, type_name, (20 * block,), torch.float32), want)
