"""What every rank but the driver runs: join the group, load its shard, serve the driver's steps."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelport.distributed.launcher import WorkerJob


def serve(job: WorkerJob, rank: int) -> None:
    """Join the group of ``job`` as ``rank``, load the shard, run the driver's commands until it says stop."""
    raise NotImplementedError("tensor-parallel workers are being built (issue 14)")
