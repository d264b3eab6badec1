"""Built-in plugin: the CPU executor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelport.hookspecs import hookimpl
from modelport.options import LoadOptions
from modelport.types import Decision

_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@hookimpl
def modelport_register_executors(register: Callable[..., None]) -> None:
    """``cpu``: continuous batching with a paged KV cache, in core."""
    register("cpu", "continuous batching, paged KV cache, chunked prefill (modelport.executor.CPUExecutor)")


def executor_arguments(loaded: Any) -> dict[str, Any]:
    """What an executor built on :class:`~modelport.executor.CPUExecutor` takes from a loaded model.

    ``max_model_len``, ``vocab_size``, ``eos_token_ids`` (the config's and the
    tokenizer's) and ``kv_bytes_per_token`` (keys and values of every layer in
    the model's dtype); a GPU executor built on the same scheduler reuses it.
    """
    resolved = loaded.resolved
    facts = resolved.facts
    config = resolved.hf_text_config
    eos = getattr(config, "eos_token_id", None)
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    tokenizer = loaded.tokenizer
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        eos_ids.add(int(tokenizer.eos_token_id))
    per_token = 2 * (facts.num_hidden_layers or 0) * (facts.num_kv_heads or 0) * (facts.head_dim or 0)
    # Tensor parallelism: each rank's cache holds its share of the kv heads, so kv_cache_memory is per rank.
    per_token //= resolved.options.tensor_parallel_size
    return {
        "max_model_len": resolved.max_model_len,
        "vocab_size": facts.vocab_size or 0,
        "eos_token_ids": eos_ids,
        "kv_bytes_per_token": per_token * _BYTES.get(resolved.dtype, 4),
    }


@hookimpl(trylast=True)
def modelport_create_executor(device: str, model: Any, options: LoadOptions, loaded: Any, settings: Any) -> Any:
    """A :class:`~modelport.executor.CPUExecutor` when ``device`` is ``cpu``."""
    if device.split(":")[0] != "cpu":
        return None
    from modelport.executor import CPUExecutor

    executor = CPUExecutor(model, loaded.tokenizer, **executor_arguments(loaded), settings=settings)
    return Decision(executor, f"device {device!r}: {executor.allocator.num_blocks} KV blocks")
