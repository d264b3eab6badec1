"""The seam between the driver and what starts the other ranks of a tensor-parallel model.

The driver (rank 0: the process that made the ``LLM``, and runs its scheduler)
builds a :class:`WorkerJob` and hands it to a :class:`WorkerLauncher`, chosen by
the ``distributed_executor_backend`` option among the launchers plugins
registered (``modelport_register_distributed_backends``). The launcher starts
ranks ``1 .. world_size - 1`` wherever it places them (local processes for
``mp``, Ray actors for ``ray``); each runs :func:`run_worker`, which joins the
group through ``job.init_method``, loads its shard with ``modelport.load`` and
serves the steps the driver broadcasts until told to stop.

A launcher only starts, watches and stops: it never carries a step. The steps
travel over torch.distributed (gloo for the commands, the job's backend for the
model's own collectives).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker needs to join the group and build its shard (picklable).

    Attributes:
        reference: the model reference, as the driver's ``modelport.load`` got it.
        options: the load options (``modelport.load`` keyword arguments, ``tensor_parallel_size``
            included); plain picklable values. Left out of the ``repr`` (it may hold ``token``).
        backend: the torch.distributed backend of the model's collectives: ``gloo`` (CPU) or
            ``nccl`` (CUDA).
        init_method: where the driver's rendezvous store listens, ``tcp://HOST:PORT``.
        world_size: how many ranks in all, the driver included.
        timeout_s: seconds a collective of the model may wait before it fails.
        env: environment variables each worker sets before it imports torch (``GLOO_SOCKET_IFNAME``,
            ``NCCL_*``... that the driver had set).
    """

    reference: str
    options: dict[str, Any] = field(repr=False)  # may hold the access token: never printed
    backend: str
    init_method: str
    world_size: int
    timeout_s: float = 120.0
    env: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class WorkerLauncher(Protocol):
    """What starts, watches and stops ranks ``1 .. world_size - 1`` (rank 0 is the driver itself).

    A registered launcher is constructed with no arguments, once per model.
    """

    def start(self, job: WorkerJob) -> None:
        """Start ranks ``1 .. job.world_size - 1``, each running ``run_worker(job, rank)``; do not wait for them."""
        ...

    def dead(self) -> list[str]:
        """A description of each worker that has died or exited (``[]`` while all run).

        Called before every step, so it must be cheap (no network round trip where it can be avoided).
        """
        ...

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every worker within ``timeout`` seconds (forcibly past it); idempotent; leaves nothing behind."""
        ...


def run_worker(job: WorkerJob, rank: int) -> None:
    """The body of every rank but the driver: join the group, load this rank's shard, serve steps until stopped.

    Returns when the driver says stop. Raises when the group cannot be joined
    or the driver goes away; a failure to load is reported to the driver (which
    raises it), then this returns.
    """
    for name, value in job.env.items():
        os.environ.setdefault(name, value)
    from modelport.distributed.worker import serve

    serve(job, rank)


# --- mp: local worker processes -------------------------------------------------------------


def _set_parent_death_signal(parent: int) -> None:
    """Linux: be killed when the driver dies, even by SIGKILL, so that no worker outlives it."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    if os.getppid() != parent:  # the driver died before the signal was armed
        os._exit(1)


def _process_main() -> None:
    """Entry point of a local worker process: its job comes pickled on stdin, from the driver that started it."""
    import pickle

    job, rank, parent = pickle.loads(sys.stdin.buffer.read())  # the driver's own data, through a pipe
    sys.stdin.close()
    _set_parent_death_signal(parent)
    run_worker(job, rank)
    # Stopped: nothing is left to save, and tearing the interpreter down (torch's modules) takes seconds
    # the driver's close() would wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class LocalProcessLauncher:
    """``mp``: the other ranks are local processes, each a fresh Python interpreter.

    A fresh interpreter, as multiprocessing's ``spawn`` start method makes, but started
    directly (``python -c``): a spawned child would import the user's main module again,
    which breaks scripts without an ``if __name__ == "__main__":`` guard and notebooks. The
    job travels pickled through the child's stdin; the child sees the driver's ``sys.path``.
    On Linux a worker is killed when its driver dies, even by SIGKILL, so none outlives it.
    """

    def __init__(self) -> None:
        self.processes: dict[int, Any] = {}

    def start(self, job: WorkerJob) -> None:
        """Start one process per rank ``1 .. world_size - 1``."""
        import pickle
        import subprocess

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        code = "from modelport.distributed.launcher import _process_main; _process_main()"
        for rank in range(1, job.world_size):
            process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, env=env)
            self.processes[rank] = process
            assert process.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # it died at once: dead() says so
                process.stdin.write(pickle.dumps((job, rank, os.getpid())))
                process.stdin.close()

    def pids(self) -> list[int]:
        """The process id of each worker started (for tests and diagnostics)."""
        return [p.pid for p in self.processes.values()]

    def dead(self) -> list[str]:
        """Each worker process that is no longer running, with how it ended."""
        found = []
        for rank, process in self.processes.items():
            code = process.poll()
            if code is None:
                continue
            how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            found.append(f"rank {rank} (pid {process.pid}) {how}")
        return found

    def shutdown(self, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` seconds for the workers to exit, then terminate and kill what is left.

        A stopped worker (``SIGSTOP``) is continued after ``SIGTERM``, so that it ends at once instead of being
        killed past the grace.
        """
        import signal
        import subprocess

        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
                with contextlib.suppress(OSError):  # a stopped process acts on SIGTERM only once continued
                    os.kill(process.pid, signal.SIGCONT)
        for process in self.processes.values():
            try:
                process.wait(2.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(2.0)
        self.processes.clear()
