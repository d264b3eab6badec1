"""The CPU executor's ThreadGovernor: fewer torch threads per step while the threads wait for a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from modelport import executor
from modelport.executor import ThreadGovernor

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux schedstat")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_step_runs_with_the_chosen_count_and_torch_gets_its_own_back(two_threads):
    governor = ThreadGovernor()
    assert governor.enabled  # schedstat is readable here
    governor._started, governor.threads = True, 1
    assert governor.run(torch.get_num_threads) == 1
    assert torch.get_num_threads() == 2


def test_waiting_drops_a_thread_and_quiet_steps_probe_back(monkeypatch):
    monkeypatch.setattr(executor, "_idle_cpus", lambda: 2)  # the machine looks idle when a probe is due
    governor = ThreadGovernor(threshold=0.15, probe_every=3)
    governor._adjust(2, 2, 0.6)  # a step whose threads waited 60% of the time
    assert governor.threads == 1
    governor._adjust(1, 2, 0.0)
    governor._adjust(1, 2, 0.0)
    assert governor.threads == 1
    governor._adjust(1, 2, 0.0)  # the third quiet step: try two again
    assert governor.threads == 2
    governor._adjust(2, 2, 0.5)  # the probe waited: back to one, probing half as often
    assert governor.threads == 1
    for _ in range(5):
        governor._adjust(1, 2, 0.0)
    assert governor.threads == 1
    governor._adjust(1, 2, 0.0)  # six quiet steps later
    assert governor.threads == 2
    governor._adjust(2, 2, 0.01)  # the probe paid
    governor._adjust(2, 2, 0.01)
    assert governor.threads is None  # torch's own count again


def test_no_probe_while_no_cpu_looks_idle_four_times_at_most(monkeypatch):
    monkeypatch.setattr(executor, "_idle_cpus", lambda: 1)
    governor = ThreadGovernor(probe_every=1)
    governor._adjust(2, 2, 0.9)
    steps = 0
    while governor.threads == 1:
        governor._adjust(1, 2, 0.0)
        steps += 1
    assert steps == 5  # four probes skipped, the fifth made


def test_a_competing_load_makes_steps_run_with_fewer_threads(two_threads):
    cpus = os.cpu_count() or 1
    if cpus > 4:
        pytest.skip("loading every core of a large machine is too much for a unit test")
    busy = "import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\nwhile True:\n    a = torch.tanh(a @ a)\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    others = [subprocess.Popen([sys.executable, "-c", busy], env=env) for _ in range(cpus)]
    try:
        time.sleep(2)  # let them start computing
        governor = ThreadGovernor()
        matrix = torch.randn(384, 384)

        def step() -> int:
            for _ in range(30):
                torch.tanh(matrix @ matrix)
            return torch.get_num_threads()

        used = [governor.run(step) for _ in range(6)]
    finally:
        for process in others:
            process.kill()
            process.wait()
    assert used[-1] == 1, used
    assert torch.get_num_threads() == 2


def test_the_executor_picks_greedy_tokens_with_the_governors_thread_count(two_threads, tmp_path, monkeypatch):
    """The step's argmax runs inside the governed region: after it, an op with every thread may wait on a busy CPU."""
    pytest.importorskip("modelport_hf", reason="reads a kit-made Hugging Face folder")
    import modelport
    from modelport.testing import make_tiny_model

    llm = modelport.LLM(str(make_tiny_model(tmp_path / "llama", "llama")), dtype="float32", model_impl="native")
    governor = llm.executor.threads
    assert governor.enabled
    seen: list[int] = []
    real = executor.sample_greedy

    def spy(logits: torch.Tensor) -> list[int]:
        seen.append(torch.get_num_threads())
        return real(logits)

    monkeypatch.setattr(executor, "sample_greedy", spy)
    monkeypatch.setattr(governor, "_adjust", lambda *args: None)  # keep the count this test chose
    governor._started, governor.threads = True, 1
    result = llm.generate(["Hello world"], modelport.SamplingParams(temperature=0, max_tokens=3))[0]
    assert len(result.outputs[0].token_ids) == 3
    assert seen == [1, 1, 1]  # one pick a generated token, each with the governor's one thread
    assert torch.get_num_threads() == 2
