"""Tensor parallelism over two ranks with distributed_executor_backend="ray" (gloo on the CPU), on a local Ray cluster.

Rank 1 is a Ray actor placed by the model's placement group; it runs core's
run_worker. Each architecture's two-rank model is compared with the same model in
one process, as a user sees it: float32 logits within 1e-5 and the same greedy
tokens. The last test of each kills the actor mid-generation: the pending requests
fail with ExecutorError within seconds, and closing leaves no actor or group behind.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

ray = pytest.importorskip("ray", reason="modelport-ray's tests need ray (pip install 'ray>=2.40')")
pytest.importorskip("modelport_hf", reason="the tiny models are Hugging Face folders")
torch = pytest.importorskip("torch")

from modelport import LLM, SamplingParams  # noqa: E402
from modelport.distributed.driver import ShardedModel  # noqa: E402
from modelport.errors import ExecutorError  # noqa: E402
from modelport_ray.launcher import RayLauncher  # noqa: E402

PROMPTS = [[5, 17, 200, 31, 9, 77, 3], [250, 4, 19], [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110]]
OPTIONS = {"dtype": "float32", "skip_tokenizer_init": True}
#: The issue's three architectures, written by core's harness (tests/distributed/tp_harness.py).
ARCHITECTURES = ["llama", "qwen2", "mixtral"]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread in the driver: the ranks share two cores (Ray gives the actor one thread itself)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def pair(request, ray_cluster, tp_harness, tmp_path_factory, one_thread):
    """``{"arch", "single", "sharded"}``: the model in this process, and over two ranks through Ray."""
    arch = request.param
    folder = tp_harness.write_tp_model(tmp_path_factory.mktemp(arch), arch)
    held = {"arch": arch, "harness": tp_harness, "single": LLM(str(folder), **OPTIONS)}
    held["sharded"] = LLM(str(folder), tensor_parallel_size=2, distributed_executor_backend="ray", **OPTIONS)
    yield held
    held["sharded"].close()


def launcher_of(llm: LLM) -> RayLauncher:
    proxy = llm.loaded.model
    assert isinstance(proxy, ShardedModel)
    assert isinstance(proxy.launcher, RayLauncher)
    return proxy.launcher


def leftovers(launcher: RayLauncher) -> tuple[list[str], list[str]]:
    """This launcher's named actors still alive, and its placement groups not removed."""
    suffix = launcher.group_name.removeprefix("modelport-tp-")
    actors = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(suffix)]
    groups = [g["state"] for g in ray.util.placement_group_table().values() if g["name"] == launcher.group_name]
    return actors, [state for state in groups if state != "REMOVED"]


def test_rank_1_is_a_ray_actor_on_the_models_placement_group(pair):
    launcher = launcher_of(pair["sharded"])
    proxy = pair["sharded"].loaded.model
    assert launcher.cluster == "the Ray runtime this process had already initialised"
    assert launcher.strategy == "STRICT_PACK"
    [pid] = proxy.worker_pids()
    assert pid == launcher.workers[1]["pid"] != os.getpid()
    assert [r["rank"] for r in proxy.reports] == [0, 1] and all(r["error"] is None for r in proxy.reports)
    assert leftovers(launcher) == ([launcher.actor_name(1)], ["CREATED"])
    assert launcher.dead() == []


def test_float32_logits_match_the_single_process_model_within_1e_5(pair):
    worst, expected = pair["harness"].logit_parity(
        pair["single"].loaded.model, pair["sharded"].loaded.model, PROMPTS, 3
    )
    assert worst < 1e-5, f"{pair['arch']}: logits differ by {worst:.2e}"
    assert expected.abs().max().item() > 0.1  # a real comparison: the logits are not all near zero


def test_greedy_generation_gives_the_same_tokens(pair):
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    expected = pair["single"].generate(PROMPTS, params)
    got = pair["sharded"].generate(PROMPTS, params)
    for want, have in zip(expected, got, strict=True):
        assert len(have.outputs[0].token_ids) == 12
        assert have.outputs[0].token_ids == want.outputs[0].token_ids


def test_a_killed_actor_fails_the_pending_requests_within_seconds_and_close_leaves_nothing(pair):
    llm = pair["sharded"]
    launcher = launcher_of(llm)
    executor = llm.executor
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    for prompt in PROMPTS:
        executor.add_request(prompt, params)
    executor.step()  # the prefill ran on both ranks
    os.kill(launcher.workers[1]["pid"], signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(ExecutorError) as raised:
        while executor.has_unfinished():
            executor.step()
    assert time.monotonic() - killed < 10.0
    assert f"rank 1 (Ray actor {launcher.actor_name(1)} on " in str(raised.value)
    assert "the Ray actor died" in str(raised.value)
    started = time.monotonic()
    with pytest.raises(ExecutorError, match="the Ray actor died"):
        llm.generate([[1, 2, 3]], params)
    assert time.monotonic() - started < 2.0
    llm.close()
    assert leftovers(launcher) == ([], [])
    assert ray.is_initialized()  # the test's cluster is not the launcher's to stop
