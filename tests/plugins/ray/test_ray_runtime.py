"""Which Ray runtime the launcher uses: its own when no cluster runs, and it stops only what it started.

These tests run without the module cluster of the other files. A fresh Python
process finds no Ray running, so its launchers start a local runtime, share it,
and the last one to shut down stops it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ray = pytest.importorskip("ray", reason="modelport-ray's tests need ray (pip install 'ray>=2.40')")

from modelport.errors import ExecutorError  # noqa: E402
from modelport_ray.launcher import RayLauncher  # noqa: E402

# Two launchers of two ranks, each holding a rank-1 actor that serves until shutdown.
TWO_LAUNCHERS = textwrap.dedent(
    """
    import json, os, time
    import ray
    from modelport.distributed.launcher import WorkerJob
    from modelport_ray.launcher import RayLauncher

    def serve(job, rank):
        time.sleep(120)

    job = WorkerJob(reference="unused", options={}, backend="gloo", init_method="tcp://127.0.0.1:29556", world_size=2)
    seen = {"before": ray.is_initialized()}
    first, second = RayLauncher(target=serve), RayLauncher(target=serve)
    first.start(job)
    second.start(job)
    seen["cluster"] = [first.cluster, second.cluster]
    seen["pids"] = [first.workers[1]["pid"], second.workers[1]["pid"]]
    first.shutdown()
    seen["after_first"] = ray.is_initialized()
    seen["second_dead"] = second.dead()
    second.shutdown()
    seen["after_second"] = ray.is_initialized()
    print(json.dumps(seen))
    """
)


def _ray_running_on_this_machine() -> bool:
    from ray._private.services import find_gcs_addresses

    return bool(find_gcs_addresses())


def test_without_a_cluster_launchers_start_a_local_runtime_share_it_and_the_last_one_stops_it():
    if _ray_running_on_this_machine():
        pytest.skip("a Ray cluster runs on this machine: the launcher would join it instead of starting its own")
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    # Four CPUs for the runtime the launcher starts, whatever the machine has: two groups of two bundles.
    env["RAY_OVERRIDE_RESOURCES"] = json.dumps({"CPU": 4})
    done = subprocess.run(
        [sys.executable, "-c", TWO_LAUNCHERS], env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["before"] is False
    assert seen["cluster"] == [
        "a local Ray runtime started by modelport (no cluster was running, RAY_ADDRESS is unset)",
        "the Ray runtime modelport started earlier in this process",
    ]
    assert seen["pids"][0] != seen["pids"][1]
    # The first launcher's shutdown left the runtime (and the second launcher's rank) alone.
    assert seen["after_first"] is True and seen["second_dead"] == []
    assert seen["after_second"] is False


def test_a_ray_client_address_is_refused_before_anything_starts(monkeypatch):
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head.example:10001")
    launcher = RayLauncher()
    with pytest.raises(ExecutorError) as raised:
        launcher.start(object())
    assert str(raised.value).startswith(
        "RAY_ADDRESS='ray://head.example:10001' is a Ray Client address, which distributed_executor_backend='ray' "
        "does not support: rank 0 runs in this process"
    )
    assert not ray.is_initialized()
    launcher.shutdown()
