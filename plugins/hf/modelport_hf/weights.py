"""Choosing and streaming Hugging Face weight files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelport.config_checks import load_json_file
from modelport.containment import is_plain_relative
from modelport.errors import InvalidConfigError, WeightsCorruptError, WeightsMissingError
from modelport.types import Decision, Source, WeightFiles
from modelport.weight_checks import note_weight_file

SAFETENSORS_INDEX = "model.safetensors.index.json"
PT_INDEX = "pytorch_model.bin.index.json"
#: ``.bin``/``.pt`` files that are not model weights (vLLM skips the same).
NOT_WEIGHTS = ("training_args.bin", "optimizer.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth")


def _shards_from_index(source: Source, index: str) -> tuple[str, ...]:
    path = source.fetch(index)
    try:
        entries = list(load_json_file(path)["weight_map"].items())
    except (InvalidConfigError, KeyError, TypeError, AttributeError) as exc:
        raise WeightsCorruptError(str(path), f"not a valid shard index ({type(exc).__name__}: {exc})") from exc
    for tensor, shard in entries:
        if not isinstance(shard, str):
            raise WeightsCorruptError(
                str(path), f"field 'weight_map' names {shard!r} as the shard of {tensor!r}; expected a file name"
            )
    shards = tuple(sorted({shard for _, shard in entries}))
    if not shards:
        # No shard would read as "no file to read", which is how load_format='dummy' asks for random weights.
        raise WeightsCorruptError(str(path), "field 'weight_map' is empty: the index names no shard")
    outside = [s for s in shards if not is_plain_relative(s)]
    if outside:
        raise WeightsMissingError(str(path), f"names shards outside the model folder: {', '.join(map(repr, outside))}")
    missing = [s for s in shards if not source.exists(s)]
    if missing:
        raise WeightsMissingError(str(path), f"names shards that are absent: {', '.join(missing)}")
    return shards


def _top_level(files: list[str], suffixes: tuple[str, ...]) -> tuple[str, ...]:
    # consolidated*.safetensors / consolidated.NN.pth are Mistral's layout of the same weights, under Mistral's
    # names (load_format="mistral" reads them): a repository holding both layouts must not fetch them twice.
    return tuple(
        f
        for f in files
        if "/" not in f and f.endswith(suffixes) and f not in NOT_WEIGHTS and not f.startswith("consolidated")
    )


def _safetensors(source: Source) -> WeightFiles | None:
    if source.exists(SAFETENSORS_INDEX):
        shards = _shards_from_index(source, SAFETENSORS_INDEX)
        return WeightFiles("safetensors", source, shards, SAFETENSORS_INDEX)
    files = _top_level(source.list_files(), (".safetensors",))
    return WeightFiles("safetensors", source, files) if files else None


def _pt(source: Source) -> WeightFiles | None:
    if source.exists(PT_INDEX):
        return WeightFiles("pt", source, _shards_from_index(source, PT_INDEX), PT_INDEX)
    listed = source.list_files()
    files = _top_level(listed, (".bin",)) or _top_level(listed, (".pt", ".pth"))
    return WeightFiles("pt", source, files) if files else None


def select_files(source: Source, load_format: str) -> Decision[WeightFiles]:
    """Weight files for ``load_format`` (``auto``: safetensors first, ``.bin``/``.pt`` as fallback).

    Raises:
        WeightsMissingError: no file of the requested kind.
    """
    if load_format in ("auto", "safetensors"):
        found = _safetensors(source)
        if found is not None:
            how = f"shards named by {found.index_file}" if found.index_file else "*.safetensors files"
            return Decision(found, f"{how} (safetensors are preferred)")
        if load_format == "safetensors":
            raise WeightsMissingError(source.location, "no *.safetensors files (load_format='safetensors')")
    found = _pt(source)
    if found is not None:
        reason = "no safetensors; PyTorch checkpoint fallback" if load_format == "auto" else "load_format='pt'"
        return Decision(found, reason)
    raise WeightsMissingError(
        source.location,
        f"no weight files for load_format={load_format!r} (looked for *.safetensors, *.bin, *.pt); "
        "use load_format='dummy' for random weights",
    )


def iter_safetensors(weights: WeightFiles, *, slices: bool = False) -> Iterator[tuple[str, Any]]:
    """Yield every tensor of every file, one at a time, as views of the memory-mapped file.

    No tensor is copied here: each is read from the file when first touched
    (by the model's copy, or by its first use when the model adopts it).
    Each file is announced to the kernel first (see :func:`prefetch`).

    ``slices``: yield lazy slices (``safe_open(...).get_slice``) instead of tensors, for a
    tensor-parallel rank that reads only its part of each (``slice[rows, :]``; ``get_shape()``
    without reading). A slice must be read before the next item is asked for.
    """
    from safetensors import SafetensorError, safe_open

    for name in weights.files:
        path = weights.source.fetch(name)
        note_weight_file(path)  # errors about its tensors name it
        if not slices:  # a rank reading slices would have the kernel read the whole file
            prefetch(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    yield key, handle.get_slice(key) if slices else handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise WeightsCorruptError(str(path), f"cannot read safetensors ({exc})") from exc


def prefetch(path: Path) -> bool:
    """Ask the kernel to start reading ``path`` into the page cache, without waiting; return whether it was asked.

    Memory-mapped tensors are read page by page when first touched; a file
    that is not cached yet is read much faster as one sequential stream
    started now, while the model is being built. Skipped where
    ``posix_fadvise`` does not exist (macOS, Windows) and for a file larger
    than half the free memory, which would only push other pages out.
    """
    if not hasattr(os, "posix_fadvise"):
        return False
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if path.stat().st_size > free // 2:
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return False  # advice only: the read itself reports real problems
    return True


def iter_pt(weights: WeightFiles) -> Iterator[tuple[str, Any]]:
    """Yield every tensor of every ``.bin``/``.pt`` file, unpickled with ``weights_only=True``."""
    import pickle
    import zipfile

    import torch

    for name in weights.files:
        path = weights.source.fetch(name)
        note_weight_file(path)
        try:
            # mmap needs the zip format of torch >= 1.6; older (legacy) checkpoints are read whole.
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
            raise WeightsCorruptError(
                str(path), f"cannot load it with weights_only=True ({type(exc).__name__}: {str(exc)[:300]})"
            ) from exc
        if not isinstance(state, dict):
            raise WeightsCorruptError(str(path), f"expected a state dict, found {type(state).__name__}")
        for key, value in state.items():
            # weights_only still unpickles ints, strings and nested containers: only named tensors are weights.
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise WeightsCorruptError(
                    str(path),
                    f"entry {key!r} holds {type(value).__name__}; a state dict maps tensor names to tensors",
                )
            yield key, value
