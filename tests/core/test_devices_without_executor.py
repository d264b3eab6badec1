"""A device type no installed executor registered (``cuda`` without modelport-cuda) is checked with torch.

Before, ``modelport.load(ref, device="cuda")`` on a machine without CUDA built the
model half-way and failed inside torch with ``AssertionError: Torch not compiled
with CUDA enabled`` (``RuntimeError`` for ``mps`` or an unknown type), where the
user guide promises a ``DeviceUnavailableError`` before any file is read.
"""

from __future__ import annotations

import pytest
import torch

import modelport
from modelport.devices import resolve_device
from modelport.errors import DeviceUnavailableError
from modelport.registry import Registry
from modelport.types import RegistryEntry


def _cpu_only() -> Registry:
    registry = Registry()
    registry.extend([RegistryEntry("executor", "cpu", "modelport.builtin.cpu")])
    return registry


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cuda_without_an_executor_or_a_gpu_is_unavailable(no_cuda):
    with pytest.raises(DeviceUnavailableError) as caught:
        resolve_device("cuda:1", _cpu_only())
    assert str(caught.value) == (
        f"device 'cuda:1' is not available: torch {torch.__version__} finds no cuda device on this machine; "
        "use device='cpu'"
    )


def test_an_index_past_the_devices_present_is_unavailable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1", _cpu_only()) == ("cuda:1", "given by the device option")
    with pytest.raises(DeviceUnavailableError, match=r"device 'cuda:2' is not available: this machine has 2 cuda"):
        resolve_device("cuda:2", _cpu_only())


def test_a_device_type_torch_does_not_know_is_unavailable():
    with pytest.raises(DeviceUnavailableError, match=r"device 'acme' is not available: torch .* knows no device type"):
        resolve_device("acme", _cpu_only())


def test_load_on_an_absent_cuda_is_a_device_unavailable_error_before_building(no_cuda, toy_native, toy_model):
    folder = toy_model()
    with pytest.raises(DeviceUnavailableError, match="finds no cuda device"):
        modelport.load(str(folder), device="cuda")


def test_llm_on_cuda_without_modelport_cuda_names_the_plugin_to_install():
    from modelport.errors import ExecutorError

    with pytest.raises(ExecutorError) as caught:
        resolve_device("cuda:0", _cpu_only(), need_executor=True)
    assert str(caught.value) == (
        "no installed executor drives device 'cuda:0' (registered: cpu); install modelport-cuda for it"
    )
