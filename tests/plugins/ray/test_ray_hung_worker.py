"""A Ray worker actor that hangs (its process stopped with SIGSTOP) fails the requests after the collective timeout.

The same driver code serves the ``mp`` and ``ray`` backends: none of the driver's waits
outlasts ``MODELPORT_DISTRIBUTED_TIMEOUT`` (3 s here), and the failure shuts the workers
down; here Ray has to kill a stopped actor process, and remove the placement group. The
bounds on the seconds are bounds on a hang, not speed measurements.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import pytest

ray = pytest.importorskip("ray", reason="modelport-ray's tests need ray (pip install 'ray>=2.40')")
pytest.importorskip("modelport_hf", reason="the tiny models are Hugging Face folders")
torch = pytest.importorskip("torch")

from modelport import LLM  # noqa: E402

TIMEOUT_S = 3
HANG_BOUND_S = 60.0


def test_a_stopped_actor_fails_the_pending_requests_after_the_timeout_and_close_leaves_nothing(
    ray_cluster, tp_harness, tmp_path, monkeypatch
):
    monkeypatch.setenv("MODELPORT_DISTRIBUTED_TIMEOUT", str(TIMEOUT_S))
    folder = tp_harness.write_tp_model(tmp_path / "m", "qwen2")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    options = {"dtype": "float32", "skip_tokenizer_init": True}
    llm = LLM(str(folder), tensor_parallel_size=2, distributed_executor_backend="ray", **options)
    launcher = llm.loaded.model.launcher
    [pid] = llm.loaded.model.worker_pids()
    assert pid == launcher.workers[1]["pid"]
    # Should the driver hang after all, the stopped actor is killed: the test then fails instead of hanging.
    guard = threading.Timer(3 * HANG_BOUND_S, lambda: os.kill(pid, signal.SIGKILL) if tp_harness.alive(pid) else None)
    guard.daemon = True
    guard.start()
    try:
        error, waited = tp_harness.interrupt_generation(llm.executor, pid, signal.SIGSTOP, steps=1)
        assert str(error).startswith(
            f"tensor-parallel worker rank 1 (pid {pid}, stopped) did not answer within {TIMEOUT_S} s "
            "(MODELPORT_DISTRIBUTED_TIMEOUT); the workers were shut down"
        ), str(error)
        assert waited < HANG_BOUND_S
        llm.close()
        assert tp_harness.wait_gone([pid]) == []
        suffix = launcher.group_name.removeprefix("modelport-tp-")
        actors = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(suffix)]
        groups = [g["state"] for g in ray.util.placement_group_table().values() if g["name"] == launcher.group_name]
        assert actors == [] and [state for state in groups if state != "REMOVED"] == []
    finally:
        guard.cancel()
        torch.set_num_threads(threads)
        llm.close()
        if tp_harness.alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
