"""Across nodes: a two-node Ray cluster on this machine (Ray's own cluster_utils), one CPU per node.

The launcher must then pack as few nodes as fit (PACK), pin rank 0's bundle to the
driver's node, place rank 1 on the other node, and give it a rendezvous address other
nodes can reach (the driver node's address, not 127.0.0.1). The two-rank model still
matches the single-process one.
"""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray", reason="modelport-ray's tests need ray (pip install 'ray>=2.40')")
pytest.importorskip("modelport_hf", reason="the tiny models are Hugging Face folders")
torch = pytest.importorskip("torch")

from modelport import LLM, SamplingParams  # noqa: E402
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
