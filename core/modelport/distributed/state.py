"""Which tensor-parallel rank this process is: vLLM's ``get_tensor_model_parallel_rank()`` idea.

A process is a single rank (rank 0 of 1) unless a worker or the driver of a
tensor-parallel model sets otherwise around building its shard
(:func:`parallel_state`). Native models read :func:`current` in ``from_config`` and keep
what it said: each rank builds only its shard, and its collectives run on ``group``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParallelState:
    """One process's place in a tensor-parallel group.

    Attributes:
        rank: this process's rank in the group (0 is the driver).
        world_size: how many ranks share the model (the ``tensor_parallel_size`` option).
        group: the ``torch.distributed`` process group the collectives run on (``None``: the
            default group, or no group at all when ``world_size`` is 1).
    """

    rank: int = 0
    world_size: int = 1
    group: Any = None

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a group of {self.world_size}")

    @property
    def sharded(self) -> bool:
        """Whether the model is split over more than one rank."""
        return self.world_size > 1


SINGLE = ParallelState()
_current: ParallelState = SINGLE


def current() -> ParallelState:
    """The parallel state of this process (:data:`SINGLE`, rank 0 of 1, unless set)."""
    return _current


def set_current(state: ParallelState) -> ParallelState:
    """Make ``state`` this process's parallel state; return the previous one."""
    global _current
    previous, _current = _current, state
    return previous


@contextlib.contextmanager
def parallel_state(state: ParallelState) -> Iterator[ParallelState]:
    """Set ``state`` for the duration of the block (building a shard), then restore the previous one."""
    previous = set_current(state)
    try:
        yield state
    finally:
        set_current(previous)
