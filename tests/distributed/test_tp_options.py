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


# --- models that cannot be sharded: typed errors before any process starts -----------------


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    pytest.importorskip("modelport_hf", reason="the model is a Hugging Face folder")
    return make_tiny_model(tmp_path_factory.mktemp("llama"), tokenizer=False)  # 4 heads, 2 kv heads, vocab 384


def _children() -> set[int]:
    import os
    from pathlib import Path

    me = str(os.getpid())
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            found.add(int(stat.parent.name))
    return found


@pytest.mark.parametrize(
    ("size", "overrides", "field", "value"),
    [
        (3, {}, "num_attention_heads", 4),
        (4, {}, "num_key_value_heads", 2),
        (2, {"vocab_size": 385}, "vocab_size", 385),
        (2, {"intermediate_size": 129}, "intermediate_size", 129),
    ],
)
def test_a_size_that_does_not_divide_is_refused_naming_the_field_before_any_process_starts(
    tiny_llama, size, overrides, field, value
):
    from modelport import LLM
    from modelport.errors import InvalidConfigError

    before = _children()
    with pytest.raises(InvalidConfigError) as info:
        LLM(str(tiny_llama), skip_tokenizer_init=True, tensor_parallel_size=size, hf_overrides=overrides)
    assert (info.value.field, info.value.value) == (field, value)
    assert f"tensor_parallel_size={size}" in str(info.value) and str(tiny_llama) in str(info.value)
    assert _children() <= before  # no worker was started


def test_the_transformers_backend_is_refused_naming_tensor_parallel_size(tiny_llama):
    pytest.importorskip("modelport_transformers", reason="the Transformers backend is a plugin")
    from modelport import LLM

    with pytest.raises(InvalidOptionError) as info:
        LLM(str(tiny_llama), skip_tokenizer_init=True, tensor_parallel_size=2, model_impl="transformers")
    assert info.value.option == "tensor_parallel_size" and info.value.value == 2
    assert "no tensor-parallel support" in str(info.value)


@pytest.mark.parametrize(
    "target",
    ["modelport.models.chatglm:ChatGLMForCausalLM", "modelport.models.internlm2:InternLM2ForCausalLM"],
)
def test_native_classes_without_tensor_parallel_support_are_refused(target):
    from modelport.distributed.checks import check_tensor_parallel
    from modelport.registry import import_target

    cls = import_target(target)
    with pytest.raises(InvalidOptionError) as info:
        check_tensor_parallel(cls, object(), 2, location="m", architecture="X")
    assert info.value.option == "tensor_parallel_size" and cls.__qualname__ in str(info.value)
    check_tensor_parallel(cls, object(), 1, location="m", architecture="X")  # one rank: anything runs


def test_load_builds_a_shard_only_inside_a_group_of_that_size(tiny_llama):
    from modelport import load

    with pytest.raises(InvalidOptionError) as info:
        load(str(tiny_llama), skip_tokenizer_init=True, tensor_parallel_size=2)
    assert info.value.option == "tensor_parallel_size" and "modelport.LLM starts the group" in str(info.value)


# --- reading a rank's slices ----------------------------------------------------------------------


def test_modelport_hf_yields_lazy_slices_only_for_a_tensor_parallel_load(tiny_llama):
    import torch

    from modelport import resolve
    from modelport.plugins import get_host

    read = {}
    for size in (1, 2):
        resolved = resolve(str(tiny_llama), skip_tokenizer_init=True, tensor_parallel_size=size)
        answer = get_host().call_first(
            "modelport_iter_weights",
            weights=resolved.weight_files,
            hf_config=resolved.hf_config,
            options=resolved.options,
            config_format=resolved.config_format,
        )
        read[size] = dict(answer.value)  # {name: tensor or slice}
    assert set(read[1]) == set(read[2])
    name = "model.embed_tokens.weight"
    whole, lazy = read[1][name], read[2][name]
    assert isinstance(whole, torch.Tensor) and not isinstance(lazy, torch.Tensor)
    assert lazy.get_shape() == list(whole.shape)  # known without reading
    assert torch.equal(lazy[192:384, :], whole[192:]) and lazy[192:384, :].shape == (192, 64)  # rank 1's rows only


def test_read_shard_takes_the_same_rows_from_a_slice_and_from_a_tensor(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from modelport.distributed.layers import read_shard
    from modelport.distributed.state import ParallelState
    from modelport.errors import WeightsCorruptError

    full = torch.arange(8 * 6, dtype=torch.float32).reshape(8, 6)
    save_file({"w": full}, tmp_path / "w.safetensors")
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as handle:
        for rank in (0, 1):
            state = ParallelState(rank, 2)
            rows = read_shard("w", handle.get_slice("w"), 0, 4, state)
            assert torch.equal(rows, full[rank * 4 : rank * 4 + 4]) and torch.equal(
                rows, read_shard("w", full, 0, 4, state)
            )
            cols = read_shard("w", handle.get_slice("w"), 1, 3, state)
            assert torch.equal(cols, full[:, rank * 3 : rank * 3 + 3])
            halves = read_shard("w", handle.get_slice("w"), 0, 2, state, halves=True)  # gate rows 0-3, up rows 4-7
            expected = torch.cat([full[rank * 2 : rank * 2 + 2], full[4 + rank * 2 : 4 + rank * 2 + 2]])
            assert torch.equal(halves, expected)
        with pytest.raises(WeightsCorruptError, match=r"'w' of shape \[8, 6\] cannot be split"):
            read_shard("w", handle.get_slice("w"), 0, 3, ParallelState(0, 2))


def test_a_worker_job_never_prints_the_access_token():
    from modelport.distributed.launcher import WorkerJob

    job = WorkerJob("org/private", {"token": "hf_secret123", "tensor_parallel_size": 2}, "gloo", "tcp://h:1", 2)
    assert "hf_secret123" not in repr(job) and "org/private" in repr(job)
