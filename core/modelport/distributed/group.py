"""Joining a tensor-parallel group, and the messages the driver sends its workers.

The driver holds a ``torch.distributed.TCPStore`` (the rendezvous, at the job's
``init_method``); every rank builds two process groups on it, without touching
torch.distributed's global default group (so one process may drive several
models):

* **compute**: the model's collectives (all-reduce, all-gather), on the job's
  backend (gloo on the CPU, NCCL on CUDA), with the job's timeout;
* **commands**: gloo, for the driver's messages (one per step); its timeout is
  long, since a worker waits on it for as long as the driver is idle. The driver's
  own waits on it are bounded by the job's timeout instead (``timeout_s`` of
  :func:`send` and :func:`gather`): a worker that hangs must not hold the driver.

Messages are JSON (no pickle: a message is data, never code), broadcast as bytes.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from modelport.errors import InvalidOptionError

#: The store key each worker increments once it has reached the driver's store.
JOINED_KEY = "modelport/joined"
#: How long a worker waits on the commands group for the driver's next message (the driver may idle).
COMMAND_TIMEOUT = timedelta(days=30)
#: Default seconds a collective of the model waits (``MODELPORT_DISTRIBUTED_TIMEOUT`` overrides).
DEFAULT_TIMEOUT_S = 120.0


def collective_timeout() -> float:
    """Seconds a model collective may wait: ``MODELPORT_DISTRIBUTED_TIMEOUT``, else :data:`DEFAULT_TIMEOUT_S`."""
    raw = os.environ.get("MODELPORT_DISTRIBUTED_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise InvalidOptionError("MODELPORT_DISTRIBUTED_TIMEOUT", raw, detail="expected a positive number of seconds")
    return value


def parse_init_method(init_method: str) -> tuple[str, int]:
    """``(host, port)`` of a ``tcp://HOST:PORT`` init method."""
    parts = urlsplit(init_method)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        raise ValueError(f"expected an init method tcp://HOST:PORT, got {init_method!r}")
    return parts.hostname, parts.port


def make_groups(store: Any, rank: int, world_size: int, backend: str, timeout_s: float) -> tuple[Any, Any]:
    """The compute and commands process groups of this rank (blocks until every rank builds them)."""
    import torch.distributed as dist
    from torch._C._distributed_c10d import PrefixStore

    compute_store = PrefixStore("modelport/compute/", store)
    compute: Any
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timedelta(seconds=timeout_s)
        compute = dist.ProcessGroupNCCL(compute_store, rank, world_size, options)
    elif backend == "gloo":
        compute = dist.ProcessGroupGloo(compute_store, rank, world_size, timedelta(seconds=timeout_s))
    else:
        raise ValueError(f"unsupported torch.distributed backend {backend!r} (gloo or nccl)")
    commands = dist.ProcessGroupGloo(PrefixStore("modelport/commands/", store), rank, world_size, COMMAND_TIMEOUT)
    return compute, commands


def _wait(work: Any, timeout_s: float | None) -> None:
    """Wait for ``work``; at most ``timeout_s`` seconds when given (RuntimeError past it)."""
    if timeout_s is None:
        work.wait()
    else:
        work.wait(timedelta(seconds=timeout_s))


def _broadcast(group: Any, tensor: Any, timeout_s: float | None = None) -> None:
    import torch.distributed as dist

    options = dist.BroadcastOptions()
    options.rootRank = 0
    _wait(group.broadcast([tensor], options), timeout_s)


def send(group: Any, message: dict[str, Any], timeout_s: float | None = None) -> None:
    """Rank 0: broadcast ``message`` (JSON-able) to every rank of ``group``.

    ``timeout_s``: fail (``RuntimeError``) when the ranks have not taken it within that many
    seconds. gloo sends only once the receiver has posted its receive, so a rank that hangs
    instead of waiting for the message would otherwise keep the sender waiting for the
    commands group's timeout (:data:`COMMAND_TIMEOUT`, days): the driver always gives one.
    """
    import torch

    data = json.dumps(message, separators=(",", ":")).encode()
    _broadcast(group, torch.tensor([len(data)], dtype=torch.int64), timeout_s)
    _broadcast(group, torch.frombuffer(bytearray(data), dtype=torch.uint8), timeout_s)


def receive(group: Any) -> dict[str, Any]:
    """Ranks above 0: the next message rank 0 broadcast."""
    import torch

    size = torch.zeros(1, dtype=torch.int64)
    _broadcast(group, size)
    data = torch.empty(int(size.item()), dtype=torch.uint8)
    _broadcast(group, data)
    message: dict[str, Any] = json.loads(data.numpy().tobytes())
    return message


def gather(
    group: Any, world_size: int, message: dict[str, Any], timeout_s: float | None = None
) -> list[dict[str, Any]]:
    """Every rank's ``message`` (JSON-able), in rank order, on every rank (within ``timeout_s`` when given)."""
    import torch

    data = json.dumps(message, separators=(",", ":")).encode()
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world_size)]
    _wait(group.allgather([sizes], [torch.tensor([len(data)], dtype=torch.int64)]), timeout_s)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else padded[:0]
    parts = [torch.empty(longest, dtype=torch.uint8) for _ in range(world_size)]
    _wait(group.allgather([parts], [padded]), timeout_s)
    return [json.loads(p[: int(s.item())].numpy().tobytes()) for p, s in zip(parts, sizes, strict=True)]


def rank_report(rank: int, model: Any, error: str | None) -> dict[str, Any]:
    """What a rank says about itself: its process and host, the bytes its parameters take, its peak memory."""
    import resource
    import socket
    import sys

    report: dict[str, Any] = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "error": error}
    parameters = getattr(model, "parameters", None)
    report["parameter_bytes"] = (
        sum(p.numel() * p.element_size() for p in parameters()) if callable(parameters) and error is None else 0
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report["peak_rss_bytes"] = peak if sys.platform == "darwin" else peak * 1024
    device = getattr(model, "device", None)
    if error is None and getattr(device, "type", None) == "cuda":
        import torch

        report["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return report
