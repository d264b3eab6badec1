"""The launcher's choices that need no cluster: placement strategy, timeout, a reachable rendezvous, GPU clashes."""

from __future__ import annotations

import pytest

from modelport.errors import ExecutorError
from modelport_ray.launcher import (
    DEFAULT_PLACEMENT_TIMEOUT,
    STRATEGIES,
    gpu_clash,
    placement_strategy,
    placement_timeout,
    reachable_init_method,
)


def test_one_node_packs_strictly_and_several_nodes_pack(monkeypatch):
    monkeypatch.delenv("MODELPORT_RAY_PLACEMENT_STRATEGY", raising=False)
    assert placement_strategy(1) == "STRICT_PACK"
    assert placement_strategy(3) == "PACK"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_environment_variable_chooses_any_ray_strategy(monkeypatch, strategy):
    monkeypatch.setenv("MODELPORT_RAY_PLACEMENT_STRATEGY", strategy.lower())
    assert placement_strategy(1) == placement_strategy(4) == strategy


def test_the_constructor_argument_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("MODELPORT_RAY_PLACEMENT_STRATEGY", "SPREAD")
    assert placement_strategy(2, "STRICT_SPREAD") == "STRICT_SPREAD"


def test_an_unknown_strategy_is_an_executor_error_naming_the_variable_value_and_choices(monkeypatch):
    monkeypatch.setenv("MODELPORT_RAY_PLACEMENT_STRATEGY", "scatter")
    with pytest.raises(ExecutorError) as raised:
        placement_strategy(2)
    assert str(raised.value) == (
        "MODELPORT_RAY_PLACEMENT_STRATEGY='scatter' is not a Ray placement strategy; "
        "choose from STRICT_PACK, PACK, SPREAD, STRICT_SPREAD"
    )


def test_placement_timeout_defaults_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv("MODELPORT_RAY_PLACEMENT_TIMEOUT", raising=False)
    assert placement_timeout() == DEFAULT_PLACEMENT_TIMEOUT == 120.0
    monkeypatch.setenv("MODELPORT_RAY_PLACEMENT_TIMEOUT", "2.5")
    assert placement_timeout() == 2.5


@pytest.mark.parametrize("raw", ["0", "-3", "soon", "nan"])
def test_a_bad_placement_timeout_is_an_executor_error_naming_it(monkeypatch, raw):
    monkeypatch.setenv("MODELPORT_RAY_PLACEMENT_TIMEOUT", raw)
    with pytest.raises(ExecutorError, match=rf"MODELPORT_RAY_PLACEMENT_TIMEOUT='{raw}' must be a positive number"):
        placement_timeout()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("tcp://127.0.0.1:29500", "tcp://10.1.2.3:29500"),
        ("tcp://localhost:41000", "tcp://10.1.2.3:41000"),
        ("tcp://[::1]:41000", "tcp://10.1.2.3:41000"),
        ("tcp://0.0.0.0:41000", "tcp://10.1.2.3:41000"),
        ("tcp://10.9.9.9:29500", "tcp://10.9.9.9:29500"),
        ("env://", "env://"),
        ("file:///tmp/rendezvous", "file:///tmp/rendezvous"),
    ],
)
def test_a_loopback_rendezvous_becomes_the_driver_node_address(given, expected):
    assert reachable_init_method(given, "10.1.2.3") == expected


def test_an_ipv6_driver_address_is_bracketed():
    assert reachable_init_method("tcp://127.0.0.1:29500", "fd00::5") == "tcp://[fd00::5]:29500"


def _workers(*gpus_by_rank, node="driver-node"):
    return {
        rank: {"node_id": node, "accelerators": {"GPU": list(gpus)} if gpus else {}}
        for rank, gpus in enumerate(gpus_by_rank, start=1)
    }


def test_a_worker_given_the_drivers_gpu_is_named_with_the_gpus_the_workers_hold():
    message = gpu_clash("cuda:0", None, "driver-node", _workers(["1"], ["0"], ["2"]))
    assert message == (
        "Ray gave rank 2's actor GPU 0, the GPU the driver (rank 0, device='cuda:0') uses: NCCL cannot run two "
        "ranks on one GPU. The workers on the driver's node have GPU(s) 0, 1, 2; give the driver another one "
        "(device='cuda:N')"
    )


def test_the_drivers_gpu_is_read_through_its_cuda_visible_devices():
    # device cuda:1 under CUDA_VISIBLE_DEVICES=4,6 is physical GPU 6, which rank 1 holds; GPU 1 clashes with nothing.
    assert "GPU 6, the GPU the driver (rank 0, device='cuda:1')" in gpu_clash(
        "cuda:1", "4,6", "driver-node", _workers(["6"])
    )
    assert gpu_clash("cuda:1", None, "driver-node", _workers(["6"])) == ""
    assert gpu_clash("cuda", None, "driver-node", _workers(["0"])).startswith("Ray gave rank 1's actor GPU 0")


def test_workers_on_other_nodes_or_on_other_gpus_do_not_clash():
    assert gpu_clash("cuda:0", None, "driver-node", _workers(["0"], node="other-node")) == ""
    assert gpu_clash("cuda:0", None, "driver-node", _workers(["1"], ["2"])) == ""
    assert gpu_clash("cuda:0", None, "driver-node", _workers([])) == ""
