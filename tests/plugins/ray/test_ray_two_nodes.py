"""Across nodes: a two-node Ray cluster on this machine (Ray's own cluster_utils), one CPU per node.

The launcher must then pack as few nodes as fit (PACK), pin rank 0's bundle to the
driver's node, place rank 1 on the other node, and give it a rendezvous address other
nodes can reach (the driver node's address, not 127.0.0.1); the two-rank model still
matches the single-process one. MODELPORT_RAY_PLACEMENT_STRATEGY is honoured, and a
driver process joins the cluster RAY_ADDRESS names and leaves it running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ray = pytest.importorskip("ray", reason="modelport-ray's tests need ray (pip install 'ray>=2.40')")
pytest.importorskip("modelport_hf", reason="the tiny models are Hugging Face folders")
torch = pytest.importorskip("torch")

from modelport import LLM, SamplingParams  # noqa: E402
from modelport.distributed.launcher import WorkerJob  # noqa: E402
from modelport.errors import ExecutorError  # noqa: E402
from modelport_ray.launcher import RayLauncher  # noqa: E402

OPTIONS = {"dtype": "float32", "skip_tokenizer_init": True}
PROMPTS = [[5, 17, 200, 31, 9, 77, 3], [250, 4, 19]]


@pytest.fixture(scope="module")
def two_nodes():
    """A head node and a second node, one CPU each, with this process connected to the head."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_two_ranks_on_two_nodes_pack_reach_the_driver_node_and_match_one_process(
    two_nodes, tp_harness, tmp_path, monkeypatch
):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    folder = tp_harness.write_tp_model(tmp_path / "llama", "llama")
    single = LLM(str(folder), **OPTIONS)
    sharded = LLM(str(folder), tensor_parallel_size=2, distributed_executor_backend="ray", **OPTIONS)
    try:
        launcher = sharded.loaded.model.launcher
        assert isinstance(launcher, RayLauncher)
        driver_node = ray.get_runtime_context().get_node_id()
        driver_ip = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == driver_node)
        assert launcher.strategy == "PACK"
        table = next(g for g in ray.util.placement_group_table().values() if g["name"] == launcher.group_name)
        assert table["bundles_to_node_id"][0] == driver_node  # rank 0's bundle where rank 0 runs
        assert launcher.workers[1]["node_id"] != driver_node  # one CPU per node: rank 1 went to the other
        assert launcher.init_method.startswith(f"tcp://{driver_ip}:") and driver_ip != "127.0.0.1"
        params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
        want = [o.outputs[0].token_ids for o in single.generate(PROMPTS, params)]
        assert [o.outputs[0].token_ids for o in sharded.generate(PROMPTS, params)] == want
        single_steps = tp_harness.PagedSteps(single.loaded.model)
        sharded_steps = tp_harness.PagedSteps(sharded.loaded.model)
        work = dict(enumerate(PROMPTS))
        worst = (sharded_steps.step(work, all_logits=True) - single_steps.step(work, all_logits=True)).abs().max()
        assert worst.item() < 1e-5
    finally:
        sharded.close()
    assert launcher.dead() == [] or all("died" in line or "returned" in line for line in launcher.dead())
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    assert launcher.actor_name(1) not in names


def test_the_strategy_variable_is_honoured_strict_pack_cannot_place_two_ranks_on_one_cpu_nodes(two_nodes, monkeypatch):
    monkeypatch.setenv("MODELPORT_RAY_PLACEMENT_STRATEGY", "strict_pack")
    monkeypatch.setenv("MODELPORT_RAY_PLACEMENT_TIMEOUT", "1")
    launcher = RayLauncher(target=lambda job, rank: None)
    with pytest.raises(ExecutorError) as raised:
        launcher.start(WorkerJob("unused", {}, "gloo", "tcp://127.0.0.1:29559", 2))
    message = str(raised.value)
    assert "could not place 2 bundles of {'CPU': 1} (STRICT_PACK, bundle 0 on the driver's node" in message
    assert message.endswith("the cluster has 2 CPU in all and 2 CPU free on 2 node(s): see `ray status`")


# A driver process that joins the cluster through RAY_ADDRESS, places two ranks, and shuts down.
_JOINS_THROUGH_RAY_ADDRESS = """
import json, time
import ray
from modelport.distributed.launcher import WorkerJob
from modelport_ray.launcher import RayLauncher

def serve(job, rank):
    time.sleep(120)

launcher = RayLauncher(target=serve)
launcher.start(WorkerJob("unused", {}, "gloo", "tcp://127.0.0.1:29560", 2))
seen = {"cluster": launcher.cluster, "strategy": launcher.strategy, "init_method": launcher.init_method}
seen["driver_node"] = ray.get_runtime_context().get_node_id()
seen["rank1_node"] = launcher.workers[1]["node_id"]
launcher.shutdown()
seen["connected_after"] = ray.is_initialized()
print(json.dumps(seen))
"""


def test_a_driver_joins_the_cluster_ray_address_names_and_leaves_it_running(two_nodes):
    env = {**os.environ, "RAY_ADDRESS": two_nodes.address}
    env.pop("MASTER_ADDR", None)
    done = subprocess.run(
        [sys.executable, "-c", _JOINS_THROUGH_RAY_ADDRESS], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["cluster"] == f"the Ray cluster at RAY_ADDRESS={two_nodes.address}"
    assert seen["strategy"] == "PACK" and seen["rank1_node"] != seen["driver_node"]
    assert seen["init_method"].startswith("tcp://") and "127.0.0.1" not in seen["init_method"]
    # It disconnected its own connection; the cluster it joined runs on, with nothing of that driver left.
    assert seen["connected_after"] is False
    assert len([node for node in ray.nodes() if node["Alive"]]) == 2
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("modelport-")]
