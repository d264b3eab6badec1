"""Hook implementations of modelport-cuda: the ``cuda`` executor.

This module is what the ``modelport-cuda`` entry point names. Like every
plugin, it imports torch inside hook bodies only, so that ``modelport plugins``
stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelport.hookspecs import hookimpl
from modelport.types import Decision


@hookimpl
def modelport_register_executors(register: Callable[..., None]) -> None:
    """``cuda``: continuous batching on NVIDIA GPUs, with its availability check (for ``device="auto"`` too)."""
    register(
        "cuda",
        "continuous batching on NVIDIA GPUs: paged KV cache sized by gpu_memory_utilization, "
        "CUDA graphs for decode (modelport_cuda.executor.CUDAExecutor)",
        available="modelport_cuda.device:cuda_unavailable_reason",
    )


@hookimpl
def modelport_create_executor(device: str, model: Any, loaded: Any, settings: Any) -> Any:
    """A :class:`~modelport_cuda.executor.CUDAExecutor` when ``device`` is ``cuda`` or ``cuda:N``.

    Raises:
        DeviceUnavailableError: no such CUDA device on this machine.
        ExecutorError: the GPU's memory does not hold the model and one sequence's cache.
    """
    if device.split(":")[0] != "cuda":
        return None
    from modelport_cuda.executor import create_cuda_executor

    executor, reason = create_cuda_executor(device, model, loaded, settings)
    return Decision(executor, reason)
