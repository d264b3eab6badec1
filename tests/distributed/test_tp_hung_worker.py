"""A tensor-parallel worker that hangs (stopped with SIGSTOP) fails the requests after the collective timeout.

The worker does not die, so nothing closes its connections: the driver learns of it only
because none of its waits outlasts ``MODELPORT_DISTRIBUTED_TIMEOUT`` (3 s here). The
requests fail with ExecutorError naming the rank and its pid, and the stopped worker is
killed, so nothing is left behind. The bounds on the seconds are bounds on a hang (before
the fix the driver waited for more than ten minutes), not speed measurements.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("modelport_hf", reason="the tiny models are Hugging Face folders")
pytest.importorskip("torch")

from tp_harness import alive, interrupt_generation, wait_gone, write_tp_model

from modelport import LLM, SamplingParams
from modelport.errors import ExecutorError

#: The collective timeout of these tests, in seconds (MODELPORT_DISTRIBUTED_TIMEOUT).
TIMEOUT_S = 3
#: Far more than the timeout and the shutdown after it; a driver that waited this long hangs.
HANG_BOUND_S = 60.0
PARAMS = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)


@pytest.fixture
def sharded(tmp_path, monkeypatch, one_thread_each) -> Iterator[LLM]:
    """A two-rank llama whose collective timeout is :data:`TIMEOUT_S`; its worker is killed after the test."""
    monkeypatch.setenv("MODELPORT_DISTRIBUTED_TIMEOUT", str(TIMEOUT_S))
    folder = write_tp_model(tmp_path / "m", "llama")
    llm = LLM(str(folder), dtype="float32", skip_tokenizer_init=True, tensor_parallel_size=2)
    [pid] = llm.loaded.model.worker_pids()
    # Should the driver hang after all, the stopped worker is killed: the test then fails instead of hanging.
    guard = threading.Timer(3 * HANG_BOUND_S, lambda: os.kill(pid, signal.SIGKILL) if alive(pid) else None)
    guard.daemon = True
    guard.start()
    try:
        yield llm
    finally:
        guard.cancel()
        llm.close()
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def no_answer(pid: int) -> str:
    """The start of the error a user sees when worker ``pid`` is stopped."""
    return (
        f"tensor-parallel worker rank 1 (pid {pid}, stopped) did not answer within {TIMEOUT_S} s "
        "(MODELPORT_DISTRIBUTED_TIMEOUT); the workers were shut down"
    )


def test_a_worker_stopped_mid_generation_fails_the_pending_requests_after_the_timeout(sharded):
    [pid] = sharded.loaded.model.worker_pids()
    error, waited = interrupt_generation(sharded.executor, pid, signal.SIGSTOP, steps=2)
    assert str(error).startswith(no_answer(pid)), str(error)
    assert waited < HANG_BOUND_S
    # The stopped worker was killed with the failure; every later call fails the same way at once.
    assert wait_gone([pid]) == []
    with pytest.raises(ExecutorError, match="did not answer within 3 s"):
        sharded.generate([[1, 2, 3]], PARAMS)
    sharded.close()
    assert sharded.loaded.model.closed


def test_a_worker_stopped_at_any_moment_of_a_generation_fails_it_after_the_timeout(sharded):
    """Stopped from another thread while the steps run: inside a step's collectives or between two steps."""
    [pid] = sharded.loaded.model.worker_pids()
    executor = sharded.executor
    stopper = threading.Timer(0.3, os.kill, (pid, signal.SIGSTOP))
    stopper.start()
    with pytest.raises(ExecutorError) as info:
        while True:  # requests keep coming until the worker is stopped
            if not executor.has_unfinished():
                executor.add_request([5, 6, 7], PARAMS)
                executor.add_request([8, 9], PARAMS)
            executor.step()
    stopper.join()
    assert str(info.value).startswith(no_answer(pid)), str(info.value)
    assert wait_gone([pid]) == []


def test_a_worker_stopped_while_idle_fails_the_next_request_after_the_timeout(sharded):
    [pid] = sharded.loaded.model.worker_pids()
    first = sharded.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    assert len(first[0].outputs[0].token_ids) == 3  # the two ranks served a request before
    os.kill(pid, signal.SIGSTOP)
    time.sleep(0.5)  # idle: the driver sends nothing while no request is pending
    started = time.monotonic()
    with pytest.raises(ExecutorError) as info:
        sharded.generate([[8, 9, 10]], PARAMS)
    assert str(info.value).startswith(no_answer(pid)), str(info.value)
    assert time.monotonic() - started < HANG_BOUND_S
    sharded.close()
    assert wait_gone([pid]) == []


def test_closing_a_model_whose_worker_is_stopped_kills_the_worker(sharded):
    """The stop message is never taken by a stopped worker: close() stops waiting for it and kills the worker."""
    [pid] = sharded.loaded.model.worker_pids()
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    sharded.close()
    assert time.monotonic() - started < HANG_BOUND_S
    assert sharded.loaded.model.closed
    assert wait_gone([pid]) == []
    with pytest.raises(ExecutorError, match="was closed"):
        sharded.generate([[1, 2, 3]], PARAMS)
