"""Built-in plugin: the ``mp`` distributed backend (tensor-parallel ranks as local processes)."""

from __future__ import annotations

from collections.abc import Callable

from modelport.hookspecs import hookimpl


@hookimpl
def modelport_register_distributed_backends(register: Callable[..., None]) -> None:
    """``mp``: ranks 1..N-1 as local processes (fresh interpreters), joined by torch.distributed."""
    register(
        "mp",
        "modelport.distributed.launcher:LocalProcessLauncher",
        description="local worker processes (fresh interpreters), gloo on CPU, NCCL on CUDA",
    )
