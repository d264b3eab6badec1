"""Streaming GGUF tensors as Hugging Face ``(name, tensor)`` pairs.

Each file is memory-mapped once; each tensor is read from the map, renamed
through the architecture table, dequantised (or converted) straight to the
target dtype, un-transformed where llama.cpp's converter transformed it (the
rotary row permutation is undone on the raw rows, before dequantisation), and
yielded before the next is touched, so the memory in use beyond the model is
one tensor. A tensor of a type that is not read raises
:class:`UnsupportedTensorTypeError` naming the tensor and the type.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from modelport.errors import WeightsError
from modelport_gguf.architectures import GGUFArchitecture
from modelport_gguf.header import GGUFHeader, TensorInfo, cached_header

#: Tensors llama.cpp computes at conversion that have no Hugging Face parameter.
DERIVED_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


class UnsupportedTensorTypeError(WeightsError):
    """A GGUF tensor is stored in a ggml type this plugin cannot dequantise (the message names tensor and type)."""

    def __init__(self, file: str, tensor: str, type_name: str, supported: tuple[str, ...]) -> None:
        self.tensor = tensor
        self.type_name = type_name
        super().__init__(
            file,
            f"tensor {tensor!r} is of ggml type {type_name}, which is not supported; supported: {', '.join(supported)}",
        )


class NameMap:
    """GGUF tensor names to Hugging Face names through a table's ``tensors`` and ``fused`` entries."""

    def __init__(self, table: GGUFArchitecture) -> None:
        self.rules: list[tuple[re.Pattern[str], str]] = []
        for gguf, hf in table.tensors.items():
            suffixes = ("",) if gguf.endswith((".weight", ".bias")) else (".weight", ".bias")
            for suffix in suffixes:
                self.rules.append((_pattern(gguf + suffix), hf + suffix))
        self.fused: list[tuple[re.Pattern[str], str, tuple[str, ...]]] = []
        for hf, parts in table.fused.items():
            for i, part in enumerate(parts):
                self.fused.append((_pattern(part), hf, parts if i == 0 else ()))

    def rename(self, name: str) -> str | None:
        """The Hugging Face name of GGUF tensor ``name``, or ``None`` if the table has none."""
        for pattern, hf in self.rules:
            match = pattern.match(name)
            if match:
                return hf.replace("{bid}", match.groupdict().get("bid") or "")
        return None

    def fusion(self, name: str) -> tuple[str, tuple[str, ...]] | None:
        """``(hf name, GGUF parts)`` for the first part of a fused parameter, ``(hf name, ())`` for a later part."""
        for pattern, hf, parts in self.fused:
            match = pattern.match(name)
            if match:
                bid = match.groupdict().get("bid") or ""
                return hf.replace("{bid}", bid), tuple(p.replace("{bid}", bid) for p in parts)
        return None


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(r"\{bid\}", r"(?P<bid>\d+)") + "$")


def rotary_heads(kind: str, hf_config: Any) -> int:
    """The heads whose rows llama.cpp permuted: attention heads for ``permute_q``, kv heads for ``permute_k``."""
    text = getattr(hf_config, "get_text_config", lambda: hf_config)()
    heads = int(text.num_attention_heads)
    if kind == "permute_k":
        heads = int(getattr(text, "num_key_value_heads", None) or heads)
    return heads


def unpermute_rows(tensor: Any, heads: int) -> Any:
    """Rows of ``tensor`` back in Hugging Face's rotary order (a copy); unchanged where they do not split in heads.

    Rows only move whole, so this applies alike to values and to the raw bytes of a quantised tensor (whole
    blocks per row) before they are dequantised.
    """
    rows = tensor.shape[0]
    if rows % (2 * heads):
        return tensor
    rest = tuple(tensor.shape[1:])
    return tensor.reshape(heads, rows // heads // 2, 2, *rest).transpose(1, 2).reshape(rows, *rest).contiguous()


def undo_transform(kind: str, tensor: Any, hf_config: Any) -> Any:
    """Undo what llama.cpp's converter did: rotary row permutation, norm plus one, Conv1D transpose."""
    if kind in ("permute_q", "permute_k"):
        return unpermute_rows(tensor, rotary_heads(kind, hf_config))
    if kind == "minus_one":
        return tensor - 1
    if kind == "transpose":
        return tensor.t().contiguous()
    raise ValueError(f"unknown tensor transform {kind!r}")


def _map_file(path: Path) -> Any:
    # A private (copy-on-write) mapping gives torch a writable buffer; nothing is ever written to it.
    with open(path, "rb") as handle:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)


def read_tensor(mapped: Any, info: TensorInfo, dtype: Any, file: str, rotary_heads: int | None = None) -> Any:
    """The values of ``info`` in ``dtype``, from the memory map ``mapped`` (a view where no conversion is needed).

    With ``rotary_heads``, llama.cpp's rotary row permutation is undone on the raw rows first (a quarter of
    the float32 bytes or fewer), so the values are dequantised straight into their final order.
    """
    import torch

    from modelport_gguf.quants import SUPPORTED_TYPES, dequantize

    if info.type_name not in SUPPORTED_TYPES:
        raise UnsupportedTensorTypeError(file, info.name, info.type_name, SUPPORTED_TYPES)
    raw = torch.frombuffer(mapped, dtype=torch.uint8, count=info.nbytes, offset=info.offset)
    if rotary_heads is not None and len(info.shape) == 2:
        rows = raw.reshape(info.shape[0], -1)
        permuted = unpermute_rows(rows, rotary_heads)
        if permuted is not rows:
            release_pages(mapped, info.offset, info.nbytes)
            raw = permuted.reshape(-1)
    target = dtype if torch.empty((), dtype=dtype).is_floating_point() else torch.float32
    values = dequantize(raw, info.type_name, info.shape, target)
    if values.untyped_storage().data_ptr() != raw.untyped_storage().data_ptr():
        release_pages(mapped, info.offset, info.nbytes)
    return values


def release_pages(mapped: Any, offset: int, nbytes: int) -> None:
    """Drop the mapped pages of bytes already converted, so they stop counting in the process's memory.

    The mapping is private and never written, so every page is a clean copy of
    the file: dropping one only means reading it again if it is touched again
    (a neighbour's tensor sharing a boundary page stays correct). Advice only:
    skipped where ``madvise`` is unavailable.
    """
    advise = getattr(mapped, "madvise", None)
    flag = getattr(mmap, "MADV_DONTNEED", None)
    if advise is None or flag is None:
        return
    start = offset - offset % mmap.PAGESIZE
    try:
        advise(flag, start, offset + nbytes - start)
    except (OSError, ValueError):
        return


def iter_tensors(
    files: Mapping[str, Path], table: GGUFArchitecture, hf_config: Any, dtype: Any
) -> Iterator[tuple[str, Any]]:
    """``(hf name, tensor)`` for every tensor of every part, in file order.

    Tensors the table does not name keep their GGUF name, so the model's
    weight report lists them as unexpected; tensors llama.cpp derives at
    conversion (``rope_freqs``) are skipped.
    """
    import torch

    from modelport.executor import ThreadGovernor

    names = NameMap(table)
    headers: list[tuple[str, GGUFHeader]] = [(rel, cached_header(path)) for rel, path in files.items()]
    where: dict[str, tuple[GGUFHeader, TensorInfo]] = {}
    for _, header in headers:
        for info in header.tensors:
            where[info.name] = (header, info)
    maps: dict[Path, Any] = {}
    # Each tensor is a few hundred parallel torch operations: on a machine whose cores are busy, the governor
    # runs them with fewer threads instead of waiting at every barrier for a descheduled one (the executor's).
    governor = ThreadGovernor()

    def values(name: str, heads: int | None = None) -> Any:
        header, info = where[name]
        if header.path not in maps:
            maps[header.path] = _map_file(header.path)
        mapped = maps[header.path]
        return governor.run(lambda: read_tensor(mapped, info, dtype, str(header.path), heads))

    for _, header in headers:
        for info in header.tensors:
            if info.name in DERIVED_TENSORS:
                continue
            fusion = names.fusion(info.name)
            if fusion is not None:
                hf, parts = fusion
                if not parts:
                    continue  # yielded with the first part
                missing = [p for p in parts if p not in where]
                if missing:
                    raise WeightsError(str(header.path), f"{hf} needs GGUF tensor(s) {', '.join(missing)}, absent")
                yield hf, torch.cat([values(p) for p in parts], dim=1)
                continue
            hf_name = names.rename(info.name) or info.name
            kind = next((k for suffix, k in table.transforms.items() if hf_name.endswith(suffix)), None)
            if kind in ("permute_q", "permute_k"):
                tensor = values(info.name, rotary_heads(kind, hf_config))  # un-permuted before dequantisation
            else:
                tensor = values(info.name)
                if kind is not None:
                    tensor = undo_transform(kind, tensor, hf_config)
            yield hf_name, tensor
