"""Dequantisation of ggml tensor data in torch, vectorised over blocks.

Each ``_dq_*`` function takes the raw blocks of one type as a ``uint8``
tensor of shape ``[n_blocks, bytes_per_block]`` and writes float32 values
into ``y`` (``[n_blocks, elements_per_block]``) with in-place operations: the
integer codes are converted into ``y``, then scaled (and offset) there, so no
float32 temporary the size of the output is ever allocated (allocating and
first touching fresh memory costs more than the arithmetic). The arithmetic
mirrors gguf-py's numpy ``gguf.quants.dequantize`` operation for operation
(the same products and differences, in the same order, each rounded to
float32), so the results are bit-identical to it; tests check that on random
blocks of every type. :func:`dequantize` works through a tensor in chunks of
about two million elements, in place for a float32 output, or through one
reused float32 chunk that is rounded once into another dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from modelport_gguf.header import GGML_TYPES
from modelport_gguf.memory import new_tensor

#: Elements dequantised at once: bounds the float32 chunk and the byte-sized intermediates (8 MB and 2 MB)
#: while leaving each operation large enough for torch's intra-op threads.
CHUNK_ELEMENTS = 1 << 21

#: Chunks whose Q4_K and Q5_K sub-block factors are computed in one pass (32M elements: two 8 MiB float32 tables):
#: the scale bytes are a small part of each block, and decoding them for one chunk at a time cost a quarter to
#: a third of the kernel's time in per-operation overhead.
SCALE_CHUNKS = 16

_IQ4_NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
_CONSTANTS: dict[str, torch.Tensor] = {}


def _const(name: str, values: list[int], shape: tuple[int, ...], dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    key = f"{name}"
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(values, dtype=dtype).reshape(shape)
    return _CONSTANTS[key]


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """Two bytes per row -> float32 column ``[n, 1]``.

    The bytes are reinterpreted where they lie (every block size and scale offset is even), copied first only
    where the view is refused (an odd start).
    """
    try:
        half = raw.view(torch.float16)
    except RuntimeError:
        half = raw.contiguous().view(torch.float16)
    return half.to(torch.float32)


def _nibbles(qs: torch.Tensor, n: int, groups: int, width: int) -> torch.Tensor:
    """Low nibbles of each ``width``-byte group, then high nibbles: ``[n, groups * 2 * width]``."""
    shifted = qs.reshape(n, groups, 1, width) >> _const("s04", [0, 4], (1, 1, 2, 1))
    return (shifted & 0x0F).reshape(n, groups * 2 * width)


def _bits(qh: torch.Tensor, n: int) -> torch.Tensor:
    """The bits of ``[n, b]`` bytes, bit ``j`` of the little-endian integer at column ``j``: ``[n, 8 b]``."""
    return ((qh.unsqueeze(-1) >> _const("s8", list(range(8)), (1, 1, 8))) & 1).reshape(n, -1)


def _write_nibbles(qs: torch.Tensor, y: torch.Tensor, n: int, groups: int, width: int) -> None:
    """Low nibbles of each ``width``-byte group into the first half of its outputs, high nibbles into the second.

    Each half is converted straight into ``y`` (no broadcast intermediate). The conversion and the scaling stay
    two operations: torch vectorises a conversion and a same-dtype product, but not a product of mixed dtypes
    (5x slower here).
    """
    grouped = qs.reshape(n, groups, width)
    halves = y.view(n, groups, 2, width)
    halves[:, :, 0].copy_(grouped & 0x0F)
    halves[:, :, 1].copy_(grouped >> 4)


def _dq_q4_0(b: torch.Tensor, y: torch.Tensor) -> None:
    n = b.shape[0]
    _write_nibbles(b[:, 2:], y, n, 1, 16)
    y.sub_(8).mul_(_f16(b[:, :2]))  # small integers: the subtraction is exact, as numpy's int8 one


def _dq_q4_1(b: torch.Tensor, y: torch.Tensor) -> None:
    n = b.shape[0]
    _write_nibbles(b[:, 4:], y, n, 1, 16)
    y.mul_(_f16(b[:, :2])).add_(_f16(b[:, 2:4]))


def _dq_q5_0(b: torch.Tensor, y: torch.Tensor) -> None:
    n = b.shape[0]
    q = _nibbles(b[:, 6:], n, 1, 16) | (_bits(b[:, 2:6], n) << 4)
    y.copy_(q.view(torch.int8) - 16)
    y.mul_(_f16(b[:, :2]))


def _dq_q5_1(b: torch.Tensor, y: torch.Tensor) -> None:
    n = b.shape[0]
    y.copy_(_nibbles(b[:, 8:], n, 1, 16) | (_bits(b[:, 4:8], n) << 4))
    y.mul_(_f16(b[:, :2])).add_(_f16(b[:, 2:4]))


def _dq_q8_0(b: torch.Tensor, y: torch.Tensor) -> None:
    y.copy_(b[:, 2:].view(torch.int8))
    y.mul_(_f16(b[:, :2]))


def _dq_q2_k(b: torch.Tensor, y: torch.Tensor) -> None:
    n = b.shape[0]
    scales = b[:, :16]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0x0F).to(torch.float32)).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).reshape(n, 16, 1)
    q = (b[:, 16:80].reshape(n, 2, 1, 32) >> _const("s0246", [0, 2, 4, 6], (1, 1, 4, 1))) & 3
    out = y.view(n, 16, 16)
    out.copy_(q.reshape(n, 16, 16))
    out.mul_(dl).sub_(ml)


def _dq_q3_k(b: torch.Tensor, y: torch.Tensor) -> None:
    n = b.shape[0]
    hmask, qs, scales = b[:, :32], b[:, 32:96], b[:, 96:108]
    d = _f16(b[:, 108:110])
    low = (scales[:, :8].reshape(n, 1, 8) >> _const("s04b", [0, 4], (1, 2, 1))).reshape(n, 16)
    high = (scales[:, 8:].reshape(n, 1, 4) >> _const("s0246b", [0, 2, 4, 6], (1, 4, 1))).reshape(n, 16)
    sc = ((low & 0x0F) | ((high & 0x03) << 4)).view(torch.int8) - 32
    dl = (d * sc.to(torch.float32)).reshape(n, 16, 1)
    ql = (qs.reshape(n, 2, 1, 32) >> _const("s0246", [0, 2, 4, 6], (1, 1, 4, 1))).reshape(n, 16, 16) & 3
    qh = (hmask.reshape(n, 1, 1, 32) >> _const("s8b", list(range(8)), (1, 1, 8, 1))).reshape(n, 16, 16) & 1
    # The offset of 4 applies where the mask bit is clear: q = ql - 4 * (1 - bit).
    out = y.view(n, 16, 16)
    out.copy_(ql.view(torch.int8) - ((qh ^ 1) << 2).view(torch.int8))
    out.mul_(dl)


def _scale_min_k4(scales: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = scales.reshape(n, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _k_scales(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d * scale, dmin * min)`` of each sub-block of Q4_K or Q5_K blocks: two float32 ``[n, 8]`` views.

    Both types open with ``d``, ``dmin`` (float16) and twelve bytes packing eight 6-bit scales and eight
    6-bit mins. Where the rows are 4-byte aligned (always for a GGUF tensor's data, whose offsets are
    multiples of the file's alignment), those 16 bytes are read as four 32-bit words gathered into four
    contiguous vectors of ``n``, and the 6-bit fields are unpacked four at a time within a word (masks
    and shifts never carry a bit into another byte's kept bits, whatever the byte order); every
    operation then runs over contiguous vectors of ``n`` instead of rows of 4 to 12 bytes. The results
    are the columns of ``[8, n]`` tensors (a block's eight values one ``n`` apart). Elsewhere the bytes
    are unpacked a row at a time. Either way the products are those gguf-py makes (``d`` times the
    scale converted to float32), bit for bit.
    """
    n = b.shape[0]
    try:
        words = b.view(torch.int32)
    except RuntimeError:  # rows not 4-byte aligned: unpack the bytes a row at a time
        d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
        sc, mn = _scale_min_k4(b[:, 4:16], n)
        return d * sc.to(torch.float32), dmin * mn.to(torch.float32)
    head = torch.empty(4, n, dtype=torch.int32)
    head.copy_(words[:, :4].t())  # d|dmin, then the scale words D, M and MD, each contiguous
    low, mins, mixed = head[1], head[2], head[3]
    fields = torch.empty(4, n, dtype=torch.int32)  # scales 0-3, scales 4-7, mins 0-3, mins 4-7: a byte each
    torch.bitwise_and(low, 0x3F3F3F3F, out=fields[0])
    torch.bitwise_or(mixed & 0x0F0F0F0F, (low >> 2) & 0x30303030, out=fields[1])
    torch.bitwise_and(mins, 0x3F3F3F3F, out=fields[2])
    torch.bitwise_or((mixed >> 4) & 0x0F0F0F0F, (mins >> 2) & 0x30303030, out=fields[3])
    values = torch.empty(4, 4, n, dtype=torch.float32)  # [word, byte, block]
    values.copy_(fields.view(torch.uint8).view(4, n, 4).permute(0, 2, 1))
    factors = torch.empty(2, n, dtype=torch.float32)  # d, then dmin
    factors.copy_(head[0].view(torch.float16).view(n, 2).t())
    values[:2].mul_(factors[0])
    values[2:].mul_(factors[1])
    return values[:2].reshape(8, n).t(), values[2:].reshape(8, n).t()


def _q4_k_scaled(b: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> None:
    n = b.shape[0]
    out = y.view(n, 8, 32)
    _write_nibbles(b[:, 16:], y, n, 4, 32)
    out.mul_(scale.unsqueeze(-1)).sub_(offset.unsqueeze(-1))


def _dq_q4_k(b: torch.Tensor, y: torch.Tensor) -> None:
    _q4_k_scaled(b, y, *_k_scales(b))


def _q5_k_scaled(b: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> None:
    n = b.shape[0]
    qh = (b[:, 16:48].reshape(n, 1, 1, 32) >> _const("s8b", list(range(8)), (1, 1, 8, 1))).reshape(n, 8, 32) & 1
    out = y.view(n, 8, 32)
    out.copy_(_nibbles(b[:, 48:], n, 4, 32).view(n, 8, 32) | (qh << 4))
    out.mul_(scale.unsqueeze(-1)).sub_(offset.unsqueeze(-1))


def _dq_q5_k(b: torch.Tensor, y: torch.Tensor) -> None:
    _q5_k_scaled(b, y, *_k_scales(b))


def _dq_q6_k(b: torch.Tensor, y: torch.Tensor) -> None:
    n = b.shape[0]
    ql, qh, scales = b[:, :128], b[:, 128:192], b[:, 192:208]
    d = _f16(b[:, 208:210])
    low = _nibbles(ql, n, 2, 64).view(n, 8, 32)
    high = (qh.reshape(n, 2, 1, 32) >> _const("s0246", [0, 2, 4, 6], (1, 1, 4, 1))).reshape(n, 8, 32) & 3
    out = y.view(n, 16, 16)
    out.copy_((low | (high << 4)).view(torch.int8).view(n, 16, 16) - 32)
    out.mul_((d * scales.view(torch.int8).to(torch.float32)).reshape(n, 16, 1))


def _dq_iq4_nl(b: torch.Tensor, y: torch.Tensor) -> None:
    n = b.shape[0]
    table = _const("iq4nl", list(_IQ4_NL_VALUES), (16,), torch.int8).to(torch.float32)
    torch.index_select(table, 0, _nibbles(b[:, 2:], n, 1, 16).reshape(-1).long(), out=y.view(-1))
    y.mul_(_f16(b[:, :2]))


def _dq_iq4_xs(b: torch.Tensor, y: torch.Tensor) -> None:
    n = b.shape[0]
    d = _f16(b[:, :2])
    scales_h = b[:, 2:4].contiguous().view(torch.int16).to(torch.int32) & 0xFFFF  # [n, 1]
    low = (b[:, 4:8].reshape(n, 4, 1) >> _const("s04c", [0, 4], (1, 1, 2))).reshape(n, 8) & 0x0F
    shifts = _const("s2i", [2 * i for i in range(8)], (1, 8), torch.int32)
    high = ((scales_h >> shifts) & 0x03).to(torch.uint8)
    sc = (low | (high << 4)).view(torch.int8) - 32
    table = _const("iq4nl", list(_IQ4_NL_VALUES), (16,), torch.int8).to(torch.float32)
    torch.index_select(table, 0, _nibbles(b[:, 8:], n, 8, 16).reshape(-1).long(), out=y.view(-1))
    y.view(n, 8, 32).mul_((d * sc.to(torch.float32)).reshape(n, 8, 1))


# The IQ types below look their values up in ggml's grids (iq2xxs_grid and the like: a few thousand
# constants). Those tables are data, taken at first use from gguf-py's ``gguf.quants`` (a dependency of this
# plugin: ``<TYPE>.init_grid()`` unpacks its ``grid``), and cached as float32 tensors. The sign patterns are
# folded into the grid: row ``g * S + s`` of a signed grid is grid row ``g`` with the elements negated whose
# bit is set in sign pattern ``s``. Negation is exact and commutes with the rounding of a product, so
# ``(grid * sign) * scale`` is bit-identical to gguf-py's ``scale * grid * sign``, and each block is one
# gather into the output and one in-place scaling.

#: ggml's ksigns_iq2xs: a 7-bit sign index with its parity as the eighth bit (an even number of negations).
_KSIGNS = [i | ((bin(i).count("1") & 1) << 7) for i in range(128)]


def _grid(type_name: str) -> torch.Tensor:
    """``type_name``'s value grid from gguf-py, ``[rows, width]`` float32."""
    key = f"grid-{type_name}"
    if key not in _CONSTANTS:
        import gguf.quants

        quant = getattr(gguf.quants, type_name, None)
        if quant is None or not hasattr(quant, "init_grid"):
            version = getattr(gguf, "__version__", "unknown")
            raise RuntimeError(
                f"ggml type {type_name} needs its value grid from gguf-py (gguf.quants.{type_name}.init_grid), "
                f"which the installed gguf {version} does not provide; upgrade gguf"
            )
        quant.init_grid()
        rows, width = quant.grid_shape
        _CONSTANTS[key] = torch.as_tensor(quant.grid, dtype=torch.float32).reshape(rows, width).clone()
    return _CONSTANTS[key]


def _signed_grid(type_name: str, patterns: list[int]) -> torch.Tensor:
    """Every row of ``type_name``'s grid under every sign pattern, ``[rows * len(patterns), width]``.

    Row ``g * len(patterns) + s`` is grid row ``g`` with element ``k`` negated where bit ``k`` of ``patterns[s]``
    is set.
    """
    key = f"signed-{type_name}"
    if key not in _CONSTANTS:
        grid = _grid(type_name)
        width = grid.shape[1]
        bits = (torch.tensor(patterns, dtype=torch.int32).reshape(-1, 1) >> torch.arange(width)) & 1
        flips = 1.0 - 2.0 * bits.to(torch.float32)
        _CONSTANTS[key] = (grid.unsqueeze(1) * flips.unsqueeze(0)).reshape(-1, width)
    return _CONSTANTS[key]


def _shifted_grid(type_name: str, delta: float) -> torch.Tensor:
    """An IQ1 grid plus its offset, ``[2 * rows, width]``.

    Row ``2 g`` is grid row ``g`` + ``delta``, row ``2 g + 1`` is grid row ``g`` - ``delta`` (sums of small
    multiples of powers of two: exact).
    """
    key = f"shifted-{type_name}"
    if key not in _CONSTANTS:
        grid = _grid(type_name)
        offsets = torch.tensor([delta, -delta], dtype=torch.float32).reshape(1, 2, 1)
        _CONSTANTS[key] = (grid.unsqueeze(1) + offsets).reshape(-1, grid.shape[1])
    return _CONSTANTS[key]


def _u16(raw: torch.Tensor) -> torch.Tensor:
    """``[n, 2 k]`` bytes -> ``[n, k]`` little-endian 16-bit words, as int32 (no alignment needed)."""
    pairs = raw.reshape(raw.shape[0], -1, 2).to(torch.int32)
    return pairs[..., 0] | (pairs[..., 1] << 8)


def _u32(raw: torch.Tensor) -> torch.Tensor:
    """``[n, 4 k]`` bytes -> ``[n, k]`` little-endian 32-bit words, as int64 (no alignment needed)."""
    quads = raw.reshape(raw.shape[0], -1, 4).to(torch.int64)
    return quads[..., 0] | (quads[..., 1] << 8) | (quads[..., 2] << 16) | (quads[..., 3] << 24)


def _ksign_indices(words: torch.Tensor) -> torch.Tensor:
    """The four 7-bit sign indices in the low 28 bits of each 32-bit word: ``[n, k]`` -> ``[n, k, 4]``."""
    return (words.unsqueeze(-1) >> _const("s7", [0, 7, 14, 21], (1, 1, 4), torch.int64)) & 0x7F


def _dq_iq2_xxs(b: torch.Tensor, y: torch.Tensor) -> None:
    # d, then 8 groups of 32 values: 4 grid indices (bytes), then a word of four 7-bit sign indices and a 4-bit scale.
    n = b.shape[0]
    d = _f16(b[:, :2])
    groups = b[:, 2:].reshape(n, 8, 8)
    words = _u32(groups[:, :, 4:].reshape(n, 32))  # [n, 8]
    db = d * ((words >> 28).to(torch.float32) + 0.5) * 0.25
    idx = groups[:, :, :4].to(torch.int64) * 128 + _ksign_indices(words)
    torch.index_select(_signed_grid("IQ2_XXS", _KSIGNS), 0, idx.reshape(-1), out=y.view(-1, 8))
    y.view(n, 8, 32).mul_(db.reshape(n, 8, 1))


def _dq_iq2_xs(b: torch.Tensor, y: torch.Tensor) -> None:
    # d, 32 words (9-bit grid index, 7-bit sign index), 16 4-bit scales (one per 16 values).
    n = b.shape[0]
    d = _f16(b[:, :2])
    qs = _u16(b[:, 2:66])
    db = d * (_nibbles(b[:, 66:74], n, 8, 1).to(torch.float32) + 0.5) * 0.25
    idx = (qs & 511) * 128 + (qs >> 9)
    torch.index_select(_signed_grid("IQ2_XS", _KSIGNS), 0, idx.reshape(-1), out=y.view(-1, 8))
    y.view(n, 16, 16).mul_(db.reshape(n, 16, 1))


def _dq_iq2_s(b: torch.Tensor, y: torch.Tensor) -> None:
    # d, 32 low index bytes, 32 sign bytes (one bit per value), 2 high index bits per index, 16 4-bit scales.
    n = b.shape[0]
    d = _f16(b[:, :2])
    high = (b[:, 66:74].reshape(n, 8, 1) >> _const("s0246c", [0, 2, 4, 6], (1, 1, 4))) & 3
    grid_idx = b[:, 2:34].to(torch.int32) | (high.reshape(n, 32).to(torch.int32) << 8)
    db = d * (_nibbles(b[:, 74:82], n, 8, 1).to(torch.float32) + 0.5) * 0.25
    idx = grid_idx * 256 + b[:, 34:66].to(torch.int32)
    torch.index_select(_signed_grid("IQ2_S", list(range(256))), 0, idx.reshape(-1), out=y.view(-1, 8))
    y.view(n, 16, 16).mul_(db.reshape(n, 16, 1))


def _dq_iq3_xxs(b: torch.Tensor, y: torch.Tensor) -> None:
    # d, 64 grid indices (4 values each), 8 words of four 7-bit sign indices and a 4-bit scale (one per 32 values).
    n = b.shape[0]
    d = _f16(b[:, :2])
    words = _u32(b[:, 66:98])  # [n, 8]
    db = d * ((words >> 28).to(torch.float32) + 0.5) * 0.5
    signs = _const("ksigns", _KSIGNS, (128,), torch.int64)[_ksign_indices(words)]  # [n, 8, 4], 8 values each
    halves = (signs.unsqueeze(-1) >> _const("s04d", [0, 4], (1, 1, 1, 2), torch.int64)) & 0x0F  # 4 values each
    idx = b[:, 2:66].to(torch.int64) * 16 + halves.reshape(n, 64)
    torch.index_select(_signed_grid("IQ3_XXS", list(range(16))), 0, idx.reshape(-1), out=y.view(-1, 4))
    y.view(n, 8, 32).mul_(db.reshape(n, 8, 1))


def _dq_iq3_s(b: torch.Tensor, y: torch.Tensor) -> None:
    # d, 64 low index bytes, 64 high index bits, 32 sign bytes (one bit per value), 8 4-bit scales.
    n = b.shape[0]
    d = _f16(b[:, :2])
    grid_idx = b[:, 2:66].to(torch.int32) | (_bits(b[:, 66:74], n).to(torch.int32) << 8)
    db = d * (_nibbles(b[:, 106:110], n, 4, 1) * 2 + 1).to(torch.float32)
    halves = _nibbles(b[:, 74:106], n, 32, 1)  # the signs of each grid row's 4 values
    idx = grid_idx * 16 + halves.to(torch.int32)
    torch.index_select(_signed_grid("IQ3_S", list(range(16))), 0, idx.reshape(-1), out=y.view(-1, 4))
    y.view(n, 8, 32).mul_(db.reshape(n, 8, 1))


_IQ1_DELTA = 0.125


def _dq_iq1_s(b: torch.Tensor, y: torch.Tensor) -> None:
    # d, 32 low index bytes, 8 words: four 3-bit high index parts, a 3-bit scale and the offset's sign bit.
    n = b.shape[0]
    d = _f16(b[:, :2])
    qh = _u16(b[:, 34:50])  # [n, 8]
    dl = d * (((qh >> 12) & 7) * 2 + 1).to(torch.float32)
    high = (qh.unsqueeze(-1) >> _const("s0369", [0, 3, 6, 9], (1, 1, 4), torch.int32)) & 7
    grid_idx = b[:, 2:34].reshape(n, 8, 4).to(torch.int32) | (high << 8)
    idx = grid_idx * 2 + (qh >> 15).unsqueeze(-1)
    torch.index_select(_shifted_grid("IQ1_S", _IQ1_DELTA), 0, idx.reshape(-1), out=y.view(-1, 8))
    y.view(n, 8, 32).mul_(dl.reshape(n, 8, 1))


def _dq_iq1_m(b: torch.Tensor, y: torch.Tensor) -> None:
    # 32 low index bytes, 32 nibbles (3 high index bits, the offset's sign), 4 words of four 3-bit scales whose
    # top nibbles together are the float16 d.
    n = b.shape[0]
    words = _u16(b[:, 48:56])  # [n, 4]
    d_bits = words & 0xF000
    d_bits = (d_bits[:, 0] >> 12) | (d_bits[:, 1] >> 8) | (d_bits[:, 2] >> 4) | d_bits[:, 3]
    d_bits = d_bits - ((d_bits & 0x8000) << 1)  # as a signed 16-bit integer
    d = d_bits.to(torch.int16).view(torch.float16).to(torch.float32).reshape(n, 1)
    scales = (words.unsqueeze(-1) >> _const("s0369", [0, 3, 6, 9], (1, 1, 4), torch.int32)) & 7
    dl = d * (scales.reshape(n, 16) * 2 + 1).to(torch.float32)
    qh = (b[:, 32:48].reshape(n, 16, 1) >> _const("s04c", [0, 4], (1, 1, 2))).reshape(n, 32)
    grid_idx = b[:, :32].to(torch.int32) | ((qh & 7).to(torch.int32) << 8)
    idx = grid_idx * 2 + ((qh >> 3) & 1).to(torch.int32)
    torch.index_select(_shifted_grid("IQ1_M", _IQ1_DELTA), 0, idx.reshape(-1), out=y.view(-1, 8))
    y.view(n, 16, 16).mul_(dl.reshape(n, 16, 1))


def _trits(packed: torch.Tensor, powers: torch.Tensor) -> torch.Tensor:
    """Base-3 digits of TQ1_0's bytes: each byte times each power of 3 (wrapping, as uint8), its top trit."""
    return ((packed.unsqueeze(1) * powers).to(torch.int16) * 3) >> 8


def _dq_tq1_0(b: torch.Tensor, y: torch.Tensor) -> None:
    # 48 bytes of five trits, 4 bytes of four trits, d; each trit is a value + 1.
    n = b.shape[0]
    powers = _const("pow3", [1, 3, 9, 27, 81], (1, 5, 1))
    out = y.view(n, 256)
    out[:, :160].view(n, 5, 32).copy_(_trits(b[:, :32], powers))
    out[:, 160:240].view(n, 5, 16).copy_(_trits(b[:, 32:48], powers))
    out[:, 240:].view(n, 4, 4).copy_(_trits(b[:, 48:52], powers[:, :4]))
    y.sub_(1).mul_(_f16(b[:, 52:54]))


def _dq_tq2_0(b: torch.Tensor, y: torch.Tensor) -> None:
    # 64 bytes of four 2-bit codes (value + 1), then d.
    n = b.shape[0]
    y.copy_(((b[:, :64].reshape(n, 2, 1, 32) >> _const("s0246", [0, 2, 4, 6], (1, 1, 4, 1))) & 3).reshape(n, 256))
    y.sub_(1).mul_(_f16(b[:, 64:66]))


#: ggml type name -> block dequantiser, for every quantised type this plugin reads.
BLOCK_DEQUANTISERS: dict[str, Callable[[torch.Tensor, torch.Tensor], None]] = {
    "Q4_0": _dq_q4_0,
    "Q4_1": _dq_q4_1,
    "Q5_0": _dq_q5_0,
    "Q5_1": _dq_q5_1,
    "Q8_0": _dq_q8_0,
    "Q2_K": _dq_q2_k,
    "Q3_K": _dq_q3_k,
    "Q4_K": _dq_q4_k,
    "Q5_K": _dq_q5_k,
    "Q6_K": _dq_q6_k,
    "IQ4_NL": _dq_iq4_nl,
    "IQ4_XS": _dq_iq4_xs,
    "IQ2_XXS": _dq_iq2_xxs,
    "IQ2_XS": _dq_iq2_xs,
    "IQ2_S": _dq_iq2_s,
    "IQ3_XXS": _dq_iq3_xxs,
    "IQ3_S": _dq_iq3_s,
    "IQ1_S": _dq_iq1_s,
    "IQ1_M": _dq_iq1_m,
    "TQ1_0": _dq_tq1_0,
    "TQ2_0": _dq_tq2_0,
}
#: K-quant types whose sub-block factors :func:`dequantize` computes for many chunks at once -> their kernel.
_SCALED_KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]] = {
    "Q4_K": _q4_k_scaled,
    "Q5_K": _q5_k_scaled,
}
#: Unquantised ggml types -> the torch dtype their bytes hold.
PLAIN_TYPES: dict[str, torch.dtype] = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
}
#: Every ggml type name :func:`dequantize` reads.
SUPPORTED_TYPES: tuple[str, ...] = tuple(PLAIN_TYPES) + tuple(BLOCK_DEQUANTISERS)


def dequantize(
    raw: Any, type_name: str, shape: tuple[int, ...], dtype: torch.dtype, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Values of ``shape`` in ``dtype`` from the raw bytes ``raw`` (a ``uint8`` tensor) of ggml type ``type_name``.

    Plain types are reinterpreted and converted; quantised types are
    dequantised chunk by chunk into the output: ``out`` when given (a
    contiguous tensor of ``shape`` and ``dtype``, such as a parameter to fill),
    else a new tensor (in huge pages when large: see
    :func:`~modelport_gguf.memory.new_tensor`). Raises ``KeyError`` for a type
    it does not read (callers turn it into a typed error naming the tensor).
    """
    if type_name in PLAIN_TYPES:
        values = raw.view(PLAIN_TYPES[type_name]).reshape(shape)
        if out is not None:
            return out.copy_(values)
        return values if values.dtype == dtype else new_tensor(tuple(shape), dtype).copy_(values)
    fn = BLOCK_DEQUANTISERS[type_name]
    _, block, type_size = next(v for v in GGML_TYPES.values() if v[0] == type_name)
    blocks = raw.reshape(-1, type_size)
    n = blocks.shape[0]
    out = new_tensor((n, block), dtype) if out is None else out.view(n, block)
    step = max(1, CHUNK_ELEMENTS // block)
    # float32 is written in place; another dtype goes through one reused float32 chunk, then is rounded once.
    scratch = None if dtype == torch.float32 else torch.empty((min(n, step), block), dtype=torch.float32)
    scaled = _SCALED_KERNELS.get(type_name)
    span = step * SCALE_CHUNKS
    scales: tuple[torch.Tensor, torch.Tensor] | None = None
    for start in range(0, n, step):
        stop = min(n, start + step)
        target = out[start:stop] if scratch is None else scratch[: stop - start]
        if scaled is None:
            fn(blocks[start:stop], target)
        else:
            if start % span == 0:  # the sub-block factors of the next SCALE_CHUNKS chunks, in one pass
                scales = _k_scales(blocks[start : min(n, start + span)])
            assert scales is not None
            first = start % span
            scaled(
                blocks[start:stop],
                target,
                scales[0][first : first + stop - start],
                scales[1][first : first + stop - start],
            )
        if scratch is not None:
            out[start:stop].copy_(target)
    return out.reshape(shape)
