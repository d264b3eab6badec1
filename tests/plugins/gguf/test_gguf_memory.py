"""New tensors for dequantised values: plain ``torch.empty`` when small, huge-page mappings when large."""

from __future__ import annotations

import gc
import mmap
from pathlib import Path

import pytest
import torch

from modelport_gguf.memory import HUGE_PAGE_MIN_BYTES, new_tensor

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _vma_fields(address: int) -> dict[str, str]:
    """The ``/proc/self/smaps`` fields of the mapping that holds ``address``."""
    fields: dict[str, str] = {}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            start, end = (int(part, 16) for part in head.split("-"))
            inside = start <= address < end
            continue
        if inside and ":" in head:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_large_tensor_has_the_shape_and_dtype_asked_and_keeps_what_is_written(dtype: torch.dtype) -> None:
    rows = HUGE_PAGE_MIN_BYTES // (1024 * torch.empty((), dtype=dtype).element_size()) + 3
    tensor = new_tensor((rows, 1024), dtype)
    assert tensor.shape == (rows, 1024) and tensor.dtype == dtype and tensor.is_contiguous()
    values = torch.arange(rows * 1024, dtype=torch.float32).reshape(rows, 1024).remainder(251).to(dtype)
    tensor.copy_(values)
    gc.collect()
    assert torch.equal(tensor, values)
    assert torch.equal((tensor * 2)[-1], values[-1] * 2)  # an ordinary tensor for every operation


def test_a_small_tensor_is_an_ordinary_allocation() -> None:
    tensor = new_tensor((3, 5), torch.float32)
    assert tensor.shape == (3, 5)
    assert tensor.untyped_storage().nbytes() == 60


@pytest.mark.skipif(
    not THP.is_file() or "[never]" in THP.read_text() or getattr(mmap, "MADV_HUGEPAGE", None) is None,
    reason="this system offers no transparent huge pages (Linux with THP in madvise or always mode)",
)
def test_a_large_tensor_lies_in_a_mapping_advised_for_huge_pages() -> None:
    tensor = new_tensor((HUGE_PAGE_MIN_BYTES // 4,), torch.float32)
    fields = _vma_fields(tensor.data_ptr())
    assert fields.get("THPeligible") == "1", fields
    small = torch.empty((HUGE_PAGE_MIN_BYTES // 4,), dtype=torch.float32)
    if "[madvise]" in THP.read_text():  # without the advice, an ordinary allocation is not eligible
        assert _vma_fields(small.data_ptr()).get("THPeligible") == "0"


def test_a_large_dequantised_tensor_equals_gguf_py_and_lies_in_huge_page_memory() -> None:
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as numpy_dequantize

    from modelport_gguf.quants import dequantize

    blocks = HUGE_PAGE_MIN_BYTES // (32 * 4) + 7  # Q8_0: 32 values in 34 bytes (an f16 scale, 32 int8)
    raw = np.random.default_rng(0).integers(0, 256, size=(blocks, 34), dtype=np.uint8)
    raw[:, :2] = np.frombuffer(np.float16(0.0123).tobytes(), dtype=np.uint8)
    values = dequantize(torch.from_numpy(raw.reshape(-1)), "Q8_0", (blocks, 32), torch.float32)
    expected = numpy_dequantize(raw.reshape(-1), GGMLQuantizationType.Q8_0).reshape(blocks, 32)
    assert torch.equal(values, torch.from_numpy(expected))
    if THP.is_file() and "[never]" not in THP.read_text() and getattr(mmap, "MADV_HUGEPAGE", None) is not None:
        assert _vma_fields(values.data_ptr()).get("THPeligible") == "1"
