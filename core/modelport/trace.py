"""The trace: for each pipeline step, who answered, what they decided, why, how long.

A ``Trace`` is built step by step while the pipeline runs and is attached to
every result, so "why did it pick that?" always has an answer
(``modelport inspect REF`` prints it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TraceStep:
    """One decision of the pipeline.

    Attributes:
        step: pipeline step (``source``, ``format``, ``config``, ``patch``, ...).
        plugin: name of the plugin that answered (``modelport.builtin.*`` for core).
        decision: what was decided, short and human-readable.
        reason: why: the plugin's own reason, or how the answer was chosen.
        seconds: wall time the step took.
        asked: the plugins asked, in call order, up to and including the one that answered.
    """

    step: str
    plugin: str
    decision: str
    reason: str
    seconds: float
    asked: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (``asked`` as a list)."""
        data = asdict(self)
        data["asked"] = list(self.asked)
        return data


@dataclass
class Trace:
    """An ordered list of :class:`TraceStep`, appended to as the pipeline runs."""

    steps: list[TraceStep] = field(default_factory=list)

    def add(self, step: TraceStep) -> None:
        """Append one step."""
        self.steps.append(step)

    def record(
        self, step: str, plugin: str, decision: str, reason: str, seconds: float, asked: tuple[str, ...] = ()
    ) -> TraceStep:
        """Append a step built from its fields and return it."""
        entry = TraceStep(step, plugin, decision, reason, seconds, asked)
        self.steps.append(entry)
        return entry

    @contextmanager
    def timed(self, step: str, plugin: str, decision: str, reason: str) -> Iterator[dict[str, str]]:
        """Time a block and record it; the block may update ``decision``/``reason`` in the yielded dict."""
        info = {"decision": decision, "reason": reason}
        start = time.perf_counter()
        yield info
        self.record(step, plugin, info["decision"], info["reason"], time.perf_counter() - start)

    def find(self, step: str) -> list[TraceStep]:
        """All steps named ``step``, in order."""
        return [s for s in self.steps if s.step == step]

    def to_list(self) -> list[dict[str, Any]]:
        """JSON-friendly form."""
        return [s.to_dict() for s in self.steps]

    def format(self) -> str:
        """A table for terminals: step, plugin, time, decision and reason."""
        if not self.steps:
            return "(empty trace)"
        width_step = max(len(s.step) for s in self.steps)
        width_plugin = max(len(s.plugin) for s in self.steps)
        lines = []
        for s in self.steps:
            lines.append(
                f"{s.step:<{width_step}}  {s.plugin:<{width_plugin}}  {s.seconds * 1000:8.1f} ms  {s.decision}"
                + (f"  ({s.reason})" if s.reason else "")
            )
        return "\n".join(lines)

    def __iter__(self) -> Iterator[TraceStep]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)
