"""RayLauncher's mechanics on a real local Ray cluster: placement, actors, dead(), shutdown.

The actors run small functions of this module (sent by value) instead of core's
run_worker, so each behaviour is provoked on purpose: a rank that serves until
told to stop, one that returns at once, one that raises, one that is killed.
The launcher, Ray, the placement group and the worker processes are all real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="modelport-ray's tests need ray (pip install 'ray>=2.40')")

from modelport.distributed.launcher import WorkerJob  # noqa: E402
from modelport.errors import ExecutorError  # noqa: E402
from modelport_ray.launcher import STOP_GRACE, RayLauncher  # noqa: E402

# Ray sends these functions to its worker processes by value (they cannot import a test module).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def serve_until_stopped(job: WorkerJob, rank: int) -> None:
    """A rank that reports itself in a file, then serves until a ``stop`` file appears."""
    folder = Path(job.options["folder"])
    report = {"rank": rank, "pid": os.getpid(), "init_method": job.init_method}
    report["plugins"] = os.environ.get("MODELPORT_PLUGINS")
    report["niceness"] = os.nice(0)
    (folder / f"rank{rank}.json").write_text(json.dumps(report))
    while not (folder / "stop").exists():
        time.sleep(0.02)


def return_at_once(job: WorkerJob, rank: int) -> None:
    """A rank whose run ends as soon as it starts."""


def raise_at_once(job: WorkerJob, rank: int) -> None:
    """A rank whose run fails."""
    raise ValueError(f"rank {rank} cannot read its shard")


def job_for(folder: Path, world_size: int = 2, backend: str = "gloo") -> WorkerJob:
    return WorkerJob(
        reference="unused",
        options={"folder": str(folder)},
        backend=backend,
        init_method="tcp://127.0.0.1:29555",
        world_size=world_size,
    )


def wait_for(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


def actors_of(launcher: RayLauncher) -> list[str]:
    names = {entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)}
    return sorted(name for name in names if name.endswith(launcher.group_name.rsplit("-", 1)[-1]))


def group_state(launcher: RayLauncher) -> str | None:
    groups = ray.util.placement_group_table().values()
    return next((g["state"] for g in groups if g["name"] == launcher.group_name), None)


@pytest.fixture
def started(ray_cluster, tmp_path, monkeypatch):
    """A launcher whose rank 1 serves until ``tmp_path / "stop"`` exists; shut down after the test."""
    monkeypatch.setenv("MODELPORT_PLUGINS", "modelport-hf,modelport-ray")
    launcher = RayLauncher(target=serve_until_stopped)
    launcher.start(job_for(tmp_path))
    yield launcher
    (tmp_path / "stop").touch()
    launcher.shutdown()


def test_one_bundle_per_rank_packed_on_the_driver_node_and_each_rank_runs_in_its_actor(started, tmp_path):
    table = next(g for g in ray.util.placement_group_table().values() if g["name"] == started.group_name)
    driver_node = ray.get_runtime_context().get_node_id()
    assert table["strategy"] == "STRICT_PACK"
    assert table["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 1.0}}
    assert table["bundles_to_node_id"] == {0: driver_node, 1: driver_node}
    report = json.loads(wait_for(lambda: (tmp_path / "rank1.json").exists() and (tmp_path / "rank1.json").read_text()))
    assert report["rank"] == 1
    assert report["pid"] == started.workers[1]["pid"] != os.getpid()
    assert started.workers[1]["node_id"] == driver_node
    # One node: the loopback rendezvous stays; the driver's plugin selection reached the worker.
    assert report["init_method"] == started.init_method == "tcp://127.0.0.1:29555"
    assert report["plugins"] == "modelport-hf,modelport-ray"
    # Ray starts workers at niceness 15; a rank runs at the driver's priority, or every step waits on it.
    assert report["niceness"] == os.nice(0)
    assert started.dead() == []
    assert actors_of(started) == [started.actor_name(1)]


def test_a_rank_that_was_told_to_stop_is_reported_as_returned_and_shutdown_leaves_nothing(started, tmp_path):
    wait_for(lambda: (tmp_path / "rank1.json").exists())
    (tmp_path / "stop").touch()
    [line] = wait_for(started.dead, timeout=10)
    assert line.startswith(f"rank 1 (Ray actor {started.actor_name(1)} on ")
    assert line.endswith("run_worker returned (the worker left the group)")
    started.shutdown()
    assert actors_of(started) == []
    assert group_state(started) == "REMOVED"
    started.shutdown()  # idempotent
    assert ray.is_initialized(), "the test's own Ray runtime must stay up"


def test_shutdown_kills_a_rank_that_was_not_told_to_stop_after_a_short_grace(started, tmp_path):
    wait_for(lambda: (tmp_path / "rank1.json").exists())
    began = time.monotonic()
    started.shutdown(timeout=10)
    assert time.monotonic() - began < STOP_GRACE + 3
    assert actors_of(started) == [] and group_state(started) == "REMOVED"
    assert not (tmp_path / "stop").exists()


def test_a_killed_actor_is_reported_dead_within_seconds(started, tmp_path):
    wait_for(lambda: (tmp_path / "rank1.json").exists())
    os.kill(started.workers[1]["pid"], signal.SIGKILL)
    killed = time.monotonic()
    [line] = wait_for(started.dead, timeout=10)
    assert time.monotonic() - killed < 5
    assert line.startswith("rank 1 (") and "the Ray actor died" in line
    assert started.dead() == [line]  # reported once found, the same each time
    started.shutdown(timeout=5)
    assert actors_of(started) == [] and group_state(started) == "REMOVED"


def test_a_run_that_raises_is_reported_with_its_error(ray_cluster, tmp_path):
    launcher = RayLauncher(target=raise_at_once)
    try:
        launcher.start(job_for(tmp_path))
        [line] = wait_for(launcher.dead, timeout=10)
        assert line.endswith("run_worker raised ValueError: rank 1 cannot read its shard")
    finally:
        launcher.shutdown()
    assert actors_of(launcher) == [] and group_state(launcher) == "REMOVED"


def test_a_group_the_cluster_cannot_place_fails_with_executor_error_and_leaves_nothing(
    ray_cluster, tmp_path, monkeypatch
):
    cpus = int(ray.cluster_resources()["CPU"])
    monkeypatch.setenv("MODELPORT_RAY_PLACEMENT_TIMEOUT", "1")
    launcher = RayLauncher(target=return_at_once)
    with pytest.raises(ExecutorError) as raised:
        launcher.start(job_for(tmp_path, world_size=cpus + 1))
    message = str(raised.value)
    assert f"could not place {cpus + 1} bundles of {{'CPU': 1}} (STRICT_PACK" in message
    assert f"within 1 s (MODELPORT_RAY_PLACEMENT_TIMEOUT); the cluster has {cpus} CPU in all" in message
    assert actors_of(launcher) == [] and group_state(launcher) == "REMOVED"
    launcher.shutdown()


def test_nccl_asks_for_one_gpu_bundle_per_rank(ray_cluster, tmp_path, monkeypatch):
    if ray.cluster_resources().get("GPU"):
        pytest.skip("this cluster has GPUs: the CPU-only failure cannot be shown")
    monkeypatch.setenv("MODELPORT_RAY_PLACEMENT_TIMEOUT", "1")
    launcher = RayLauncher(target=return_at_once)
    with pytest.raises(ExecutorError, match=r"could not place 2 bundles of \{'GPU': 1\}.*has 0 GPU in all"):
        launcher.start(job_for(tmp_path, backend="nccl"))
    assert group_state(launcher) == "REMOVED"


# A driver connected to the test's cluster, which starts a launcher and exits without shutting it down.
_EXITING_DRIVER = """
import json, sys, time
import ray
from modelport.distributed.launcher import WorkerJob
from modelport_ray.launcher import RayLauncher

def serve(job, rank):
    time.sleep(300)

ray.init(address=sys.argv[1], log_to_driver=False)
launcher = RayLauncher(target=serve)
launcher.start(WorkerJob("unused", {}, "gloo", "tcp://127.0.0.1:29557", 2))
print(json.dumps({"actor": launcher.actor_name(1), "group": launcher.group_name}), flush=True)
"""


def test_a_driver_that_exits_without_shutdown_leaves_no_actor_or_group_on_the_cluster(ray_cluster, tmp_path):
    address = ray.get_runtime_context().gcs_address
    done = subprocess.run(
        [sys.executable, "-c", _EXITING_DRIVER, address], capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    left = json.loads(done.stdout.strip().splitlines()[-1])

    def gone():
        names = {entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)}
        groups = [g["state"] for g in ray.util.placement_group_table().values() if g["name"] == left["group"]]
        return left["actor"] not in names and groups == ["REMOVED"]

    assert wait_for(gone, timeout=20)


def test_a_launcher_starts_once(started, tmp_path):
    with pytest.raises(ExecutorError, match="already started"):
        started.start(job_for(tmp_path))


def test_shutdown_before_start_does_nothing(ray_cluster):
    launcher = RayLauncher()
    launcher.shutdown()
    launcher.shutdown()
    assert launcher.dead() == []
    assert ray.is_initialized()
