"""The launcher's choices that need no cluster: placement strategy, timeout, a rendezvous other nodes can reach."""

from __future__ import annotations

import pytest

from modelport.errors import ExecutorError
from modelport_ray.launcher import (
    DEFAULT_PLACEMENT_TIMEOUT,
    STRATEGIES,
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
