"""The device option: ``auto`` made concrete and a device checked, through the executors' availability checks."""

from __future__ import annotations

import sys

import pytest

from modelport.devices import resolve_device, unavailable_reason
from modelport.errors import DeviceUnavailableError, ExecutorError, InvalidOptionError, PluginError
from modelport.options import LoadOptions
from modelport.registry import Registry
from modelport.types import RegistryEntry

CHECKS = """
def present(device):
    return None


def absent(device):
    return f"no board for {device}"


def broken(device):
    return 42
"""


@pytest.fixture
def checks(tmp_path, monkeypatch):
    (tmp_path / "acme_checks.py").write_text(CHECKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "acme_checks"
    sys.modules.pop("acme_checks", None)


def _registry(**executors: str | None) -> Registry:
    registry = Registry()
    registry.extend([RegistryEntry("executor", "cpu", "modelport.builtin.cpu")])
    registry.extend(
        RegistryEntry("executor", name, f"modelport-{name}", None, "", {"available": check} if check else {})
        for name, check in executors.items()
    )
    return registry


def test_auto_picks_the_first_present_device_type_by_name(checks):
    registry = _registry(tpu=f"{checks}:absent", npu=f"{checks}:present", xpu=f"{checks}:present")
    assert resolve_device("auto", registry) == ("npu", "device='auto': npu is present (modelport-npu)")


def test_auto_falls_back_to_the_cpu_and_never_picks_an_unchecked_type(checks):
    registry = _registry(tpu=f"{checks}:absent", npu=None)
    assert resolve_device("auto", registry) == ("cpu", "device='auto': no other registered device is present here")


def test_a_device_its_check_refuses_is_a_device_unavailable_error(checks):
    registry = _registry(tpu=f"{checks}:absent")
    with pytest.raises(DeviceUnavailableError) as caught:
        resolve_device("tpu:2", registry)
    assert str(caught.value) == "device 'tpu:2' is not available: no board for tpu:2"
    assert (caught.value.device, caught.value.detail) == ("tpu:2", "no board for tpu:2")
    assert isinstance(caught.value, ExecutorError)


def test_a_device_without_a_check_or_an_executor_passes_unless_an_executor_is_needed(checks):
    registry = _registry(npu=None)
    assert resolve_device("npu:1", registry) == ("npu:1", "given by the device option")
    # modelport.load needs no executor; torch knows meta and has no presence check for it.
    assert resolve_device("meta", registry) == ("meta", "given by the device option")
    with pytest.raises(ExecutorError, match=r"no installed executor drives device 'mps' \(registered: cpu, npu\)"):
        resolve_device("mps", registry, need_executor=True)


def test_a_check_returning_something_else_than_a_reason_is_the_plugins_error(checks):
    registry = _registry(tpu=f"{checks}:broken")
    with pytest.raises(PluginError, match=r"plugin 'modelport-tpu': acme_checks:broken returned 42"):
        unavailable_reason("tpu", registry)


def test_an_executor_registers_its_check_as_a_module_function_string():
    registry = Registry()
    register = registry.registrar("executor", "acme")
    register("tpu", "a board", available="acme.device:check")
    register("npu")
    assert [(e.name, e.extra) for e in registry.of_kind("executor")] == [
        ("tpu", {"available": "acme.device:check"}),
        ("npu", {}),
    ]
    with pytest.raises(PluginError, match="target must be a 'module:Class' string"):
        register("xpu", available="no-colon")


@pytest.mark.parametrize("device", ["auto:1", "AUTO", "cuda:x", ""])
def test_auto_takes_no_index_and_bad_device_names_are_refused(device):
    with pytest.raises(InvalidOptionError, match="expected 'auto' or a device name"):
        LoadOptions(device=device)


def test_load_settles_the_device_first_and_records_it_in_its_trace(toy_native, toy_model):
    import modelport

    loaded = modelport.load(str(toy_model()), device="auto")
    first = next(iter(loaded.trace))
    # Core alone registers only the cpu executor: auto is the CPU.
    assert (first.step, first.plugin, first.decision) == ("device", "modelport", "cpu")
    assert first.reason == "device='auto': no other registered device is present here"
    assert loaded.resolved.options.device == "cpu" and loaded.model.device == "cpu"
