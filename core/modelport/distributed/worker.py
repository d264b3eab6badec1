"""What every rank but the driver runs: join the group, load its shard, serve the driver's steps."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from modelport.distributed.group import JOINED_KEY, gather, make_groups, parse_init_method, rank_report, receive

if TYPE_CHECKING:
    from modelport.distributed.launcher import WorkerJob

#: How long a worker tries to reach the driver's store.
JOIN_TIMEOUT = timedelta(seconds=300)


def rank_device(device: str, rank: int) -> str:
    """The device rank ``rank`` builds its shard on: the ``device`` option's, moved ``rank`` devices on.

    ``cuda`` (or ``cuda:B``) becomes ``cuda:(B + rank) % count`` over the visible devices, so a
    launcher that leaves every device visible gives each rank its own, and one that shows each
    worker a single device (Ray) gets ``cuda:0``. Other devices are used as given.
    """
    kind, _, index = device.partition(":")
    if kind != "cuda":
        return device
    import torch

    count = max(1, torch.cuda.device_count())
    return f"cuda:{(int(index or 0) + rank) % count}"


def serve(job: WorkerJob, rank: int) -> None:
    """Join the group of ``job`` as ``rank``, load the shard, run the driver's commands until it says stop."""
    import torch
    from torch._C._distributed_c10d import TCPStore

    from modelport.distributed.state import ParallelState, parallel_state
    from modelport.pipeline import load

    host, port = parse_init_method(job.init_method)
    store = TCPStore(host, port, job.world_size, False, JOIN_TIMEOUT)
    store.add(JOINED_KEY, 1)
    device = rank_device(str(job.options.get("device", "cpu")), rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    else:
        # The ranks share the machine's cores: each takes its share, so that none waits for a CPU.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // job.world_size))
    compute, commands = make_groups(store, rank, job.world_size, job.backend, job.timeout_s)
    state = ParallelState(rank, job.world_size, compute)
    options = {**job.options, "device": device, "skip_tokenizer_init": True}
    model: Any = None
    error = None
    try:
        with parallel_state(state):
            model = load(job.reference, **options).model
    except Exception as exc:  # reported to the driver, which raises it
        error = f"{type(exc).__name__}: {exc}"
    reports = gather(commands, job.world_size, rank_report(rank, model, error))
    if any(r["error"] for r in reports):
        return
    _serve_commands(model, commands, job.world_size, rank)


def _serve_commands(model: Any, commands: Any, world_size: int, rank: int) -> None:
    import torch

    from modelport.distributed.group import rank_report
    from modelport.models.protocol import SequenceBatch

    caches: dict[int, Any] = {}  # rank 0's cache id -> this rank's part of it
    with torch.inference_mode():
        while True:
            message = receive(commands)
            for cache_id in message.get("drop", ()):
                caches.pop(cache_id, None)
            op = message["op"]
            if op == "forward":
                batch = SequenceBatch(
                    token_ids=torch.tensor(message["token_ids"], dtype=torch.long),
                    positions=torch.tensor(message["positions"], dtype=torch.long),
                    query_lens=message["query_lens"],
                    context_lens=message["context_lens"],
                    block_tables=message["block_tables"],
                    all_logits=message["all_logits"],
                )
                model.forward(batch, caches[message["cache"]])  # rank 0's logits are the ones used
            elif op == "kv_cache":
                caches[message["cache"]] = model.new_kv_cache(message["num_blocks"], message["block_size"])
            elif op == "report":
                gather(commands, world_size, rank_report(rank, model, None))
            elif op == "stop":
                return
            else:
                raise RuntimeError(f"unknown command {op!r} from the driver")
