"""The driver's side of a tensor-parallel model: start the ranks, load rank 0's shard, drive every step.

:func:`load_sharded` is what ``modelport.LLM(..., tensor_parallel_size=N)`` calls
instead of ``modelport.load``. It returns the :class:`~modelport.pipeline.LoadedModel`
of rank 0 whose ``model`` is a :class:`ShardedModel`: a proxy that keeps the model
protocol (``new_kv_cache``, ``forward``), so that an executor (core's CPU executor
included) drives it unchanged. Each call broadcasts the step to the workers, runs
rank 0's shard (whose collectives meet the workers') and returns rank 0's logits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
import weakref
from datetime import timedelta
from pathlib import Path
from typing import Any

from modelport.distributed.group import (
    DEFAULT_TIMEOUT_S,
    JOINED_KEY,
    collective_timeout,
    gather,
    make_groups,
    rank_report,
    send,
)
from modelport.distributed.launcher import WorkerJob, WorkerLauncher
from modelport.distributed.state import ParallelState, parallel_state
from modelport.errors import ExecutorError, InvalidOptionError
from modelport.options import LoadOptions
from modelport.pipeline import LoadedModel, load, resolve
from modelport.plugins import PluginHost

#: Seconds the driver waits for every worker to reach its store (spawning and importing torch included).
JOIN_TIMEOUT_S = 300.0
#: Seconds :meth:`ShardedModel.close` gives the workers to exit before they are killed (and, at most, to take
#: the stop message: a worker that hangs never takes it).
SHUTDOWN_TIMEOUT_S = 10.0
#: Process states of ``/proc/PID/stat`` worth naming in an error: a worker in one of them cannot answer.
_HALTED_STATES = {"T": "stopped", "t": "stopped by a debugger"}


def launcher_for(host: PluginHost, name: str) -> WorkerLauncher:
    """A new launcher of the registered distributed backend ``name``."""
    entry = host.registry.lookup("distributed_backend", name)
    if entry is None or entry.target is None:
        raise InvalidOptionError("distributed_executor_backend", name, host.registry.names("distributed_backend"))
    launcher: WorkerLauncher = host.registry.load(entry.target)()
    return launcher


def load_sharded(reference: str, host: PluginHost, options: dict[str, Any]) -> LoadedModel:
    """Start ranks 1..N-1 through the chosen backend, load rank 0's shard here; the model is a :class:`ShardedModel`.

    Everything that can be refused without a process (options, the backend's name, an
    architecture without tensor-parallel support, sizes that do not divide) is refused first.
    """
    from torch._C._distributed_c10d import TCPStore

    opts = LoadOptions.from_kwargs(**options)
    world_size = opts.tensor_parallel_size
    resolved = resolve(reference, host=host, **options)  # options, backend name, the architecture
    from modelport.distributed.checks import check_tensor_parallel

    check_tensor_parallel(
        host.registry.load(resolved.architecture.target),
        resolved.hf_config,
        world_size,
        location=resolved.source.location,
        architecture=resolved.architecture.name,
    )
    launcher = launcher_for(host, opts.distributed_executor_backend or "mp")
    backend = "nccl" if resolved.options.device.startswith("cuda") else "gloo"
    timeout_s = collective_timeout()
    address = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = int(os.environ.get("MASTER_PORT", "0") or 0)
    store = TCPStore(address, port, world_size, True, timedelta(seconds=JOIN_TIMEOUT_S), wait_for_workers=False)
    env = {k: v for k, v in os.environ.items() if k.startswith(("GLOO_", "NCCL_", "MODELPORT_"))}
    job = WorkerJob(
        reference=reference,
        options=dict(options),
        backend=backend,
        init_method=f"tcp://{address}:{store.port}",
        world_size=world_size,
        timeout_s=timeout_s,
        env=env,
    )
    closer = _Closer(launcher, timeout_s)
    try:
        launcher.start(job)
        _wait_for_workers(store, launcher, world_size)
        compute, commands = make_groups(store, 0, world_size, backend, timeout_s)
        closer.commands = commands
        state = ParallelState(0, world_size, compute)
        with parallel_state(state):
            loaded = load(reference, host=host, **options)
        reports = gather(commands, world_size, rank_report(0, loaded.model, None))
    except BaseException:
        closer(stop=False)
        raise
    failed = [r for r in reports if r["error"]]
    if failed:
        closer(stop=False)
        raise ExecutorError(
            "tensor-parallel worker(s) could not load their shard: "
            + "; ".join(f"rank {r['rank']}: {r['error']}" for r in failed)
        )
    proxy = ShardedModel(loaded.model, launcher, state, commands, store, closer, reports, timeout_s=timeout_s)
    return dataclasses.replace(loaded, model=proxy)


def _wait_for_workers(store: Any, launcher: WorkerLauncher, world_size: int) -> None:
    """Wait until ranks 1..N-1 have reached the store, failing at once when one dies first."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while store.add(JOINED_KEY, 0) < world_size - 1:
        dead = launcher.dead()
        if dead:
            raise ExecutorError("tensor-parallel worker(s) died while starting: " + "; ".join(dead))
        if time.monotonic() > deadline:
            raise ExecutorError(f"tensor-parallel workers did not start within {JOIN_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


class _Closer:
    """Stops the workers once (the :class:`ShardedModel`'s finaliser: it holds no reference to the model)."""

    def __init__(self, launcher: WorkerLauncher, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.launcher = launcher
        self.commands: Any = None
        self.closed = False
        # How long the stop message may wait for the workers to take it: a hung worker never does.
        self.stop_timeout_s = min(timeout_s, SHUTDOWN_TIMEOUT_S)

    def __call__(self, stop: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        asked = False
        if stop and self.commands is not None:
            with contextlib.suppress(Exception):  # a worker already gone: the launcher cleans up
                send(self.commands, {"op": "stop"}, timeout_s=self.stop_timeout_s)
                asked = True
        # Workers asked to stop get time to exit; after a failure nothing waits for them.
        self.launcher.shutdown(SHUTDOWN_TIMEOUT_S if asked else 0.0)
        self.commands = None


class ShardedModel:
    """Rank 0's shard, driving the other ranks: the model an executor sees under tensor parallelism.

    Keeps the model protocol (``new_kv_cache``, ``forward``). Before each call it checks
    that every worker still runs; a dead worker, or a collective that fails (gloo's
    connection errors, the collective timeout), fails the call with
    :class:`~modelport.errors.ExecutorError` naming the worker, and every later call
    fails the same way at once. Every wait of the driver is bounded by the collective
    timeout (``timeout_s``, from ``MODELPORT_DISTRIBUTED_TIMEOUT``), the messages it sends
    included: a worker that hangs (stopped, deadlocked) fails the call once it passes,
    naming the workers that did not answer, and the workers are killed. :meth:`close`
    (also run when the proxy is garbage collected and at interpreter exit) stops the workers.

    Attributes:
        model: rank 0's shard.
        launcher: the backend's launcher that started the other ranks.
        parallel: rank 0's parallel state.
        reports: what each rank reported after loading (``rank``, ``pid``, ``host``, ``parameter_bytes``,
            ``peak_rss_bytes``, ``cuda_peak_bytes`` on CUDA).
        timeout_s: the seconds any wait of the driver for the workers may last.
    """

    def __init__(
        self,
        model: Any,
        launcher: WorkerLauncher,
        parallel: ParallelState,
        commands: Any,
        store: Any,
        closer: _Closer,
        reports: list[dict[str, Any]],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.model = model
        self.launcher = launcher
        self.parallel = parallel
        self.reports = reports
        self.timeout_s = timeout_s
        self._commands = commands
        self._store = store  # the rendezvous store lives as long as the group
        self._closer = closer
        self._failure: str | None = None
        self._finalizer = weakref.finalize(self, closer)
        # Each rank holds its own part of every KV cache: rank 0's cache object names the workers' one.
        self._cache_ids: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._next_cache = 0
        self._dropped: list[int] = []  # caches rank 0 let go of: the workers free theirs with the next message

    # --- the model protocol -------------------------------------------------------

    @property
    def device(self) -> Any:
        """Rank 0's device."""
        return self.model.device

    @property
    def dtype(self) -> Any:
        """The model's dtype."""
        return self.model.dtype

    def new_kv_cache(self, num_blocks: int, block_size: int) -> Any:
        """Every rank allocates its part of a new cache (its kv heads); rank 0's is returned and names it."""
        cache_id, self._next_cache = self._next_cache, self._next_cache + 1
        self._send({"op": "kv_cache", "cache": cache_id, "num_blocks": num_blocks, "block_size": block_size})
        cache = self._collective(lambda: self.model.new_kv_cache(num_blocks, block_size))
        self._cache_ids[cache] = cache_id
        weakref.finalize(cache, self._dropped.append, cache_id)
        return cache

    def forward(self, batch: Any, kv_cache: Any) -> Any:
        """Run one step on every rank; rank 0's logits."""
        cache_id = self._cache_ids.get(kv_cache)
        if cache_id is None:
            raise ExecutorError("forward() of a tensor-parallel model needs a cache made by its new_kv_cache()")
        self._send(
            {
                "op": "forward",
                "cache": cache_id,
                "token_ids": batch.token_ids.tolist(),
                "positions": batch.positions.tolist(),
                "query_lens": [int(n) for n in batch.query_lens],
                "context_lens": [int(n) for n in batch.context_lens],
                "block_tables": [[int(b) for b in table] for table in batch.block_tables],
                "all_logits": bool(batch.all_logits),
            }
        )
        return self._collective(lambda: self.model.forward(batch, kv_cache))

    def rank_reports(self) -> list[dict[str, Any]]:
        """Every rank's report now (``parameter_bytes``, ``peak_rss_bytes``...), in rank order."""
        self._send({"op": "report"})
        reports: list[dict[str, Any]] = self._collective(
            lambda: gather(
                self._commands, self.parallel.world_size, rank_report(0, self.model, None), timeout_s=self.timeout_s
            )
        )
        return reports

    # --- lifetime -------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        """The process id of every other rank, as the ranks reported them."""
        return [int(r["pid"]) for r in self.reports if r["rank"] != 0]

    @property
    def closed(self) -> bool:
        """Whether the workers were stopped."""
        return self._closer.closed

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        self._finalizer()

    def _check(self) -> None:
        if self._failure is not None:
            raise ExecutorError(self._failure)
        if self._closer.closed:
            raise ExecutorError("the tensor-parallel model was closed")
        dead = self.launcher.dead()
        if dead:
            self._fail("tensor-parallel worker(s) died: " + "; ".join(dead))

    def _fail(self, reason: str) -> None:
        self._failure = reason
        self._closer(stop=False)
        raise ExecutorError(reason)

    def _send(self, message: dict[str, Any]) -> None:
        self._check()
        if self._dropped:
            message["drop"], self._dropped[:] = list(self._dropped), []
        self._collective(lambda: send(self._commands, message, timeout_s=self.timeout_s))

    def _collective(self, work: Any) -> Any:
        started = time.monotonic()
        try:
            return work()
        except RuntimeError as exc:  # gloo/NCCL: a peer closed its connection, or the timeout passed
            timed_out = time.monotonic() - started >= 0.9 * self.timeout_s
            # A killed worker may take a moment to be reaped; a wait that ran out gave it that moment already.
            deadline = time.monotonic() + (0.0 if timed_out else 2.0)
            dead = self.launcher.dead()
            while not dead and time.monotonic() < deadline:
                time.sleep(0.05)
                dead = self.launcher.dead()
            if dead:
                self._fail("tensor-parallel worker(s) died: " + "; ".join(dead))
            if timed_out:
                self._fail(self._no_answer(exc))
            self._fail(f"tensor-parallel step failed: a collective failed: {exc}")
            raise  # unreachable: _fail raises

    def _no_answer(self, exc: BaseException) -> str:
        """Why a wait ran out: which workers did not answer (the halted ones, when a local worker is)."""
        here = socket.gethostname()
        workers = [(r, _halted(int(r["pid"])) if r.get("host") == here else "") for r in self.reports if r["rank"]]
        named = [(r, state) for r, state in workers if state] or workers
        who = ", ".join(f"rank {r['rank']} (pid {r['pid']}{', ' + state if state else ''})" for r, state in named)
        subject = f"tensor-parallel worker {who}" if len(named) == 1 else f"tensor-parallel workers {who}"
        hangs = "" if len(named) == 1 or named[0][1] else " (at least one of them hangs, the others wait for it)"
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return (
            f"{subject} did not answer within {self.timeout_s:g} s (MODELPORT_DISTRIBUTED_TIMEOUT){hangs}; "
            f"the workers were shut down ({cause})"
        )


def _halted(pid: int) -> str:
    """How local process ``pid`` is halted (``stopped``...) per ``/proc``; ``""`` when it is not, or is unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    return _HALTED_STATES.get(fields[0], "") if fields else ""
