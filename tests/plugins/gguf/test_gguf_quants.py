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
    "IQ2_XXS": (0,),
    "IQ2_XS": (0,),
    "IQ2_S": (0,),
    "IQ3_XXS": (0,),
    "IQ3_S": (0,),
    "IQ1_S": (0,),
    "IQ1_M": (),  # its scale is split into four nibbles: see IQ1_M_SCALE_BYTES
    "TQ1_0": (52,),
    "TQ2_0": (64,),
}
#: IQ1_M keeps the top nibble of these bytes (of its last four 16-bit words) for its float16 scale, low nibble first.
IQ1_M_SCALE_BYTES = (49, 51, 53, 55)


def random_blocks(type_name: str, n_blocks: int, seed: int) -> np.ndarray:
    """Random bytes with finite, varied float16 scales (signs and magnitudes included)."""
    import gguf

    _, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for offset in SCALE_FIELDS[type_name]:
        raw[:, offset : offset + 2] = random_scales(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    if type_name == "IQ1_M":
        bits = random_scales(rng, n_blocks).view(np.uint16)
        for k, offset in enumerate(IQ1_M_SCALE_BYTES):
            nibble = ((bits >> (4 * k)) & 0x0F).astype(np.uint8)
            raw[:, offset] = (raw[:, offset] & 0x0F) | (nibble << 4)
    return raw


def random_scales(rng: np.random.Generator, n: int) -> np.ndarray:
    return (rng.standard_normal(n) * 10.0 ** rng.integers(-4, 2, n)).astype(np.float16)


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
    assert np.isfinite(want).all()  # the scales were made finite, so a difference is never hidden in a NaN
    got = dequantize(torch.from_numpy(raw.reshape(-1)), type_name, (300 * block,), torch.float32)
    assert got.dtype == torch.float32 and got.shape == (300 * block,)
    assert np.array_equal(got.numpy().view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("type_name", ["Q4_K", "IQ2_S", "IQ3_XXS", "IQ1_M"])
def test_chunked_dequantisation_goes_straight_to_the_target_dtype(monkeypatch, type_name):
    import modelport_gguf.quants as quants

    monkeypatch.setattr(quants, "CHUNK_ELEMENTS", 7 * 256)  # many chunks of 7 blocks, the last one partial
    raw = torch.from_numpy(random_blocks(type_name, 50, 3).reshape(-1))
    whole = dequantize(raw, type_name, (50, 256), torch.float32)
    halves = dequantize(raw, type_name, (50, 256), torch.bfloat16)
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


@pytest.mark.parametrize("type_name", ["Q4_K", "Q5_K"])
def test_k_quant_factors_computed_for_several_chunks_at_once_stay_bit_exact(monkeypatch, type_name):
    """Q4_K and Q5_K decode their sub-block factors a span of chunks at a time; spans and chunks end mid-tensor."""
    import gguf
    from gguf.quants import dequantize as numpy_dequantize

    import modelport_gguf.quants as quants

    monkeypatch.setattr(quants, "CHUNK_ELEMENTS", 7 * 256)  # chunks of 7 blocks
    monkeypatch.setattr(quants, "SCALE_CHUNKS", 3)  # factors for 21 blocks at a time: spans at 0, 21 and 42 of 50
    raw = random_blocks(type_name, 50, 11)
    want = numpy_dequantize(raw.reshape(-1), gguf.GGMLQuantizationType[type_name]).reshape(-1).astype(np.float32)
    got = dequantize(torch.from_numpy(raw.reshape(-1)), type_name, (50 * 256,), torch.float32)
    assert np.array_equal(got.numpy().view(np.uint32), want.view(np.uint32))
    rounded = dequantize(torch.from_numpy(raw.reshape(-1)), type_name, (50, 256), torch.bfloat16)
    assert torch.equal(rounded, torch.from_numpy(want).reshape(50, 256).to(torch.bfloat16))


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_K", "Q5_K", "IQ2_XS", "IQ1_S", "TQ1_0"])
def test_blocks_at_an_odd_address_dequantise_alike(type_name):
    """Scales are read in place where the bytes allow it, and through a copy where they start at an odd byte."""
    raw = random_blocks(type_name, 20, 7).reshape(-1)
    shifted = torch.from_numpy(np.concatenate([np.zeros(1, np.uint8), raw]))[1:]
    assert shifted.storage_offset() == 1
    block = 32 if type_name == "Q8_0" else 256
    want = dequantize(torch.from_numpy(raw), type_name, (20 * block,), torch.float32)
    assert torch.equal(dequantize(shifted, type_name, (20 * block,), torch.float32), want)


def test_iq2_xxs_values_come_from_ggml_grid_and_sign_table():
    """An all-zero IQ2_XXS block with d = 1: grid row 0 (all 8) times (0.5 + 0) / 4, every sign positive: 1.0.

    Sign index 1 is ggml's ksigns entry 0x81 (an odd index gets its parity bit): values 0 and 7 of the first
    eight are negated. Scale nibble 3 makes the second group (0.5 + 3) / 4 * 8 = 7.
    """
    block = np.zeros(66, dtype=np.uint8)
    block[:2] = np.array([1.0], dtype=np.float16).view(np.uint8)
    block[2 + 4] = 1  # group 0's sign word: sign index 1 for its first grid row
    block[2 + 8 + 7] = 3 << 4  # group 1's sign word: scale nibble 3 in its top bits
    got = dequantize(torch.from_numpy(block), "IQ2_XXS", (256,), torch.float32)
    want = torch.ones(256)
    want[[0, 7]] = -1.0
    want[32:64] = 7.0
    assert torch.equal(got, want)
