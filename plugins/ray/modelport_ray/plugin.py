"""Hook implementations of modelport-ray: the ``ray`` distributed executor backend.

This module is what the ``modelport-ray`` entry point names. It implements one
hook, ``modelport_register_distributed_backends``, registering ``ray`` as
``modelport_ray.launcher:RayLauncher``: with ``tensor_parallel_size=N`` and
``distributed_executor_backend="ray"``, ranks 1..N-1 run as Ray actors placed by a
placement group, on this machine or across a Ray cluster. Ray is imported only
when a model asks for that backend.
"""

from __future__ import annotations

from collections.abc import Callable

from modelport.hookspecs import hookimpl


@hookimpl
def modelport_register_distributed_backends(register: Callable[..., None]) -> None:
    """Register the ``ray`` backend."""
    register(
        "ray",
        target="modelport_ray.launcher:RayLauncher",
        description="ranks 1..N-1 as Ray actors on a placement group (one bundle per rank), across a Ray cluster",
    )
