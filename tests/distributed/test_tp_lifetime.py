"""A tensor-parallel model's worker processes: a dead worker fails the requests fast; nothing outlives the driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("modelport_hf", reason="the tiny models are Hugging Face folders")
pytest.importorskip("torch")

from tp_harness import alive, interrupt_generation, wait_gone, write_tp_model

from modelport import LLM, SamplingParams
from modelport.errors import ExecutorError


def test_a_worker_killed_mid_generation_fails_the_pending_requests_within_seconds(tmp_path, one_thread_each):
    folder = write_tp_model(tmp_path / "m", "llama")
    llm = LLM(str(folder), dtype="float32", skip_tokenizer_init=True, tensor_parallel_size=2)
    [pid] = llm.loaded.model.worker_pids()
    error, waited = interrupt_generation(llm.executor, pid, signal.SIGKILL, steps=2)
    assert waited < 10.0
    assert f"pid {pid}" in str(error) and "killed by signal 9" in str(error)
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    # Every later call fails at once, naming the same cause; nothing hangs.
    started = time.monotonic()
    with pytest.raises(ExecutorError, match="killed by signal 9"):
        llm.generate([[1, 2, 3]], params)
    assert time.monotonic() - started < 2.0
    assert wait_gone([pid]) == []
    llm.close()


_EXITING_DRIVER = """
import json, sys
from modelport import LLM, SamplingParams
llm = LLM(sys.argv[1], dtype="float32", skip_tokenizer_init=True, tensor_parallel_size=2)
out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
print(json.dumps({"pids": llm.loaded.model.worker_pids(), "tokens": out[0].outputs[0].token_ids}), flush=True)
# no close(): the interpreter exits with the model alive
"""


def test_interpreter_exit_without_close_leaves_no_worker_behind(tmp_path):
    """Also a script without an ``if __name__ == "__main__":`` guard: the workers never import it."""
    folder = write_tp_model(tmp_path / "m", "qwen2")
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(_EXITING_DRIVER))
    done = subprocess.run(
        [sys.executable, str(script), str(folder)], capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report["tokens"]) == 4
    assert report["pids"] and wait_gone(report["pids"], 10.0) == []
    assert not any(alive(pid) for pid in report["pids"])


def test_a_checkpoint_that_does_not_fit_fails_with_its_typed_error_and_stops_the_workers(tmp_path):
    from modelport.errors import WeightsCorruptError

    folder = write_tp_model(tmp_path / "m", "llama")
    started = time.monotonic()
    with pytest.raises(WeightsCorruptError, match="does not belong to this config") as info:
        # The config says twice the MLP width the weights have: every rank's load fails the same way.
        LLM(str(folder), skip_tokenizer_init=True, tensor_parallel_size=2, hf_overrides={"intermediate_size": 256})
    assert "model.safetensors" in str(info.value)
    elapsed = time.monotonic() - started
    children = [int(p.name) for p in Path("/proc").glob("[0-9]*") if _parent(p) == os.getpid()]
    assert wait_gone(children, 5.0) == [], "a worker outlived the failed load"
    assert elapsed < 120


def _parent(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1
