"""Which Ray runtime the launcher uses: its own when no cluster runs, and it stops only what it started.

These tests run without the module cluster of the other files. A fresh Python
process finds no Ray running, so its first launcher starts a local runtime, a
second one shares it, and the last one to shut down stops it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ray = pytest.importorskip("ray", reason="modelport-ray's tests need ray (pip install 'ray>=2.40')")

from modelport.distributed.launcher import WorkerJob  # noqa: E402
from modelport.errors import ExecutorError  # noqa: E402
from modelport_ray.launcher import RayLauncher  # noqa: E402

# One launcher with a rank more than the machine has cores, then a second that finds no room left.
TWO_LAUNCHERS = textwrap.dedent(
    """
    import json, os, time
    import ray
    from modelport.distributed.launcher import WorkerJob
    from modelport.errors import ExecutorError
    from modelport_ray.launcher import RayLauncher

    def serve(job, rank):
        time.sleep(120)

    def job(world_size):
        return WorkerJob("unused", {}, "gloo", "tcp://127.0.0.1:29556", world_size)

    ranks = (os.cpu_count() or 1) + 1
    seen = {"before": ray.is_initialized(), "ranks": ranks}
    first, second = RayLauncher(target=serve), RayLauncher(target=serve)
    first.start(job(ranks))
    seen["cpus"] = ray.cluster_resources()["CPU"]
    seen["first"] = {"cluster": first.cluster, "workers": sorted(first.workers), "dead": first.dead()}
    os.environ["MODELPORT_RAY_PLACEMENT_TIMEOUT"] = "2"  # the second group cannot be placed: fail fast
    try:
        second.start(job(2))
    except ExecutorError as exc:
        seen["second_error"] = str(exc)
    seen["second_cluster"] = second.cluster
    seen["after_second"] = {"initialized": ray.is_initialized(), "first_dead": first.dead()}
    first.shutdown()
    seen["after_first"] = ray.is_initialized()
    print(json.dumps(seen))
    """
)


def _ray_running_on_this_machine() -> bool:
    from ray._private.services import find_gcs_addresses

    return bool(find_gcs_addresses())


def test_without_a_cluster_a_launcher_starts_a_local_runtime_with_a_cpu_per_rank_shares_it_and_stops_it_last():
    if _ray_running_on_this_machine():
        pytest.skip("a Ray cluster runs on this machine: the launcher would join it instead of starting its own")
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_OVERRIDE_RESOURCES")}
    done = subprocess.run(
        [sys.executable, "-c", TWO_LAUNCHERS], env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["before"] is False
    # More ranks than cores: the runtime it started counts a (logical) CPU per rank, and every rank runs.
    assert seen["cpus"] == seen["ranks"]
    assert seen["first"] == {
        "cluster": "a local Ray runtime started by modelport (no cluster was running, RAY_ADDRESS is unset)",
        "workers": list(range(1, seen["ranks"])),
        "dead": [],
    }
    # The second launcher joins that runtime, finds no CPU left, fails, and leaves the runtime to the first.
    assert seen["second_cluster"] == "the Ray runtime modelport started earlier in this process"
    assert seen["second_error"].startswith("the Ray cluster could not place 2 bundles of {'CPU': 1} (STRICT_PACK")
    assert seen["after_second"] == {"initialized": True, "first_dead": []}
    # The last launcher that used it stops it.
    assert seen["after_first"] is False


def test_a_ray_client_address_is_refused_before_anything_starts(monkeypatch):
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head.example:10001")
    launcher = RayLauncher()
    with pytest.raises(ExecutorError) as raised:
        launcher.start(WorkerJob("unused", {}, "gloo", "tcp://127.0.0.1:29558", 2))
    assert str(raised.value).startswith(
        "RAY_ADDRESS='ray://head.example:10001' is a Ray Client address, which distributed_executor_backend='ray' "
        "does not support: rank 0 runs in this process"
    )
    assert not ray.is_initialized()
    launcher.shutdown()
