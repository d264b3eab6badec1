"""How much GPU memory the KV cache gets, from ``gpu_memory_utilization``, as vLLM sizes it.

vLLM's rule (``Worker.determine_available_memory``): the engine may use
``total * gpu_memory_utilization`` bytes of the device in all; the weights and
the peak memory of the largest forward step (measured by running one) come out
of that, and the KV cache takes the rest. At start-up the device must have at
least that much free, or the engine refuses to start rather than fail later.

The functions here take the measurements as plain numbers, so the arithmetic
is tested without a GPU; :func:`measure` takes them on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelport.errors import ExecutorError

GIB = 1 << 30


def _gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB"


@dataclass(frozen=True)
class MemoryPlan:
    """The GPU memory budget of one executor, in bytes.

    Attributes:
        total: the device's memory.
        requested: ``total * gpu_memory_utilization``: what the executor may use in all.
        model: the weights (and whatever else torch held before the profile run).
        activations: the peak of the profile run above ``model``.
        kv_cache: what is left for the KV cache: ``requested - model - activations``.
    """

    total: int
    requested: int
    model: int
    activations: int
    kv_cache: int

    def describe(self) -> str:
        """One line for the trace."""
        return (
            f"KV cache {_gib(self.kv_cache)} = {_gib(self.requested)} requested "
            f"({self.requested / self.total:.2f} of {_gib(self.total)}) - weights {_gib(self.model)} "
            f"- activations {_gib(self.activations)}"
        )


def plan_memory(
    *, total: int, free: int, model: int, activations: int, gpu_memory_utilization: float, device: str = "cuda"
) -> MemoryPlan:
    """The KV cache budget on a device of ``total`` bytes, ``free`` of them free now.

    Args:
        total: the device's memory in bytes (``torch.cuda.mem_get_info()[1]``).
        free: bytes free on the device now, while this process holds ``model`` bytes
            (``torch.cuda.mem_get_info()[0]`` after the profile run and ``empty_cache``).
        model: bytes this process holds for the model (its weights), counted in the budget.
        activations: the profile run's peak above ``model``.
        gpu_memory_utilization: the share of ``total`` the executor may use, above 0, at most 1.
        device: named in the errors.

    Raises:
        ExecutorError: the device has less free memory than the share asks for (other
            processes hold it), or the weights and activations leave nothing for the cache.
    """
    requested = math.ceil(total * gpu_memory_utilization)
    available_at_start = free + model  # what was free before this process put its weights there
    if available_at_start < requested:
        raise ExecutorError(
            f"free memory on {device} ({_gib(available_at_start)} of {_gib(total)}, counting this model's "
            f"weights) is less than gpu_memory_utilization={gpu_memory_utilization} asks for ({_gib(requested)}); "
            "lower gpu_memory_utilization or free the memory other processes hold"
        )
    kv_cache = requested - model - activations
    if kv_cache <= 0:
        raise ExecutorError(
            f"on {device}, gpu_memory_utilization={gpu_memory_utilization} ({_gib(requested)}) leaves nothing for "
            f"the KV cache: the weights take {_gib(model)} and the largest step's activations {_gib(activations)}; "
            "raise gpu_memory_utilization or lower max_num_batched_tokens"
        )
    return MemoryPlan(total, requested, model, activations, kv_cache)


def kv_cache_blocks(
    budget: int, bytes_per_block: int, *, max_model_len: int, block_size: int, max_num_seqs: int
) -> int:
    """Blocks of ``bytes_per_block`` fitting in ``budget``, at most what ``max_num_seqs`` full-length sequences use.

    Raises:
        ExecutorError: the budget holds less than one sequence of ``max_model_len`` tokens.
    """
    per_sequence = math.ceil(max_model_len / block_size)
    blocks = min(budget // bytes_per_block, per_sequence * max_num_seqs)
    if blocks < per_sequence:
        raise ExecutorError(
            f"the KV cache budget ({_gib(budget)}) holds {blocks * block_size} tokens, less than one sequence of "
            f"max_model_len={max_model_len}; raise gpu_memory_utilization or lower max_model_len"
        )
    return int(blocks)
