"""Built-in plugin: the ``mp`` distributed backend (tensor-parallel ranks as local processes)."""

from __future__ import annotations

from collections.abc import Callable

from modelport.hookspecs import hookimpl


@hookimpl
def modelport_register_distributed_backends(register: Callable[..., None]) -> None:
    """``mp``: ranks 1..N-1 as local processes (multiprocessing spawn), joined by torch.distributed."""
    register(
        "mp",
        "modelport.distributed.launcher:MultiprocessingLauncher",
        description="local worker processes (multiprocessing spawn), gloo on CPU, NCCL on CUDA",
    )
