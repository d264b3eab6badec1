"""The tensor-parallel options and the distributed-backend registry, without starting any process."""

from __future__ import annotations

import pytest

from modelport import LoadOptions
from modelport.distributed.launcher import LocalProcessLauncher, WorkerLauncher
from modelport.errors import InvalidOptionError
from modelport.hookspecs import hookimpl
from modelport.testing import isolated_host, make_tiny_model


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True, None])
def test_tensor_parallel_size_must_be_a_positive_integer(value):
    with pytest.raises(InvalidOptionError) as info:
        LoadOptions(tensor_parallel_size=value)
    assert info.value.option == "tensor_parallel_size"
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", ["", 3, True])
def test_distributed_executor_backend_must_be_a_name_or_none(value):
    with pytest.raises(InvalidOptionError) as info:
        LoadOptions(distributed_executor_backend=value)
    assert info.value.option == "distributed_executor_backend"


def test_the_defaults_are_vllms():
    options = LoadOptions()
    assert options.tensor_parallel_size == 1
    assert options.distributed_executor_backend is None


def test_core_registers_the_mp_backend_as_a_worker_launcher():
    host = isolated_host()
    entry = host.registry.lookup("distributed_backend", "mp")
    assert entry is not None and entry.plugin == "modelport.builtin.distributed"
    launcher = host.registry.load(entry.target)()
    assert isinstance(launcher, LocalProcessLauncher)
    assert isinstance(launcher, WorkerLauncher)
    assert launcher.dead() == []
    launcher.shutdown()  # idempotent with nothing started
    launcher.shutdown()


class _SlurmPlugin:
    @hookimpl
    def modelport_register_distributed_backends(self, register):
        register("slurm", "modelport.distributed.launcher:LocalProcessLauncher", description="test backend")


def test_a_plugin_registers_a_backend_and_an_unknown_name_is_rejected_listing_the_registered(tmp_path):
    pytest.importorskip("modelport_hf", reason="the model is a Hugging Face folder")
    from modelport import resolve

    host = isolated_host(["modelport-hf"])
    host.register(_SlurmPlugin(), "slurm-plugin")
    assert "slurm" in host.registry.names("distributed_backend")
    model = make_tiny_model(tmp_path / "m", tokenizer=False)
    with pytest.raises(InvalidOptionError) as info:
        resolve(str(model), host=host, distributed_executor_backend="nope", skip_tokenizer_init=True)
    message = str(info.value)
    assert "distributed_executor_backend" in message and "'nope'" in message
    assert "mp" in message and "slurm" in message
    resolved = resolve(str(model), host=host, distributed_executor_backend="slurm", skip_tokenizer_init=True)
    assert resolved.options.distributed_executor_backend == "slurm"
