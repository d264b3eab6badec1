"""The architecture registry: core's natives, a third party's architecture through its entry point, model_impl."""

from __future__ import annotations

import sys

import pytest
from toy_model import ToyFormat

import modelport
from modelport.errors import UnsupportedArchitectureError
from modelport.plugins import get_host, reset_host

NATIVE = {
    "LlamaForCausalLM": "modelport.models.llama:LlamaForCausalLM",
    "MistralForCausalLM": "modelport.models.llama:MistralForCausalLM",
    "Qwen2ForCausalLM": "modelport.models.llama:Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "modelport.models.llama:Qwen3ForCausalLM",
    "MixtralForCausalLM": "modelport.models.mixtral:MixtralForCausalLM",
    "ChatGLMModel": "modelport.models.chatglm:ChatGLMForCausalLM",
    "InternLM2ForCausalLM": "modelport.models.internlm2:InternLM2ForCausalLM",
}

# The plugin module names its model class by a "module:Class" string; that module is a separate
# file of the same distribution, so that the test can see it is imported only when load() needs it.
ARCH_PLUGIN = """
from modelport import hookimpl

@hookimpl
def modelport_register_architectures(register):
    register("ToyNetForCausalLM", "toynet_model:ToyNet", impl="native", description="a third party's model")
"""

ARCH_MODULE = """
from modelport import WeightReport

class ToyNet:
    def __init__(self, hf_config, dtype, device):
        self.hf_config, self.dtype, self.device = hf_config, dtype, device

    @classmethod
    def from_config(cls, hf_config, *, dtype, device):
        return cls(hf_config, dtype, device)

    def load_weights(self, weights):
        return WeightReport(loaded=tuple(name for name, _ in weights))
"""


@pytest.fixture
def toy_format(modelport_host):
    with modelport_host.plugin(ToyFormat(), "toy-format"):
        yield modelport_host


def test_core_registers_its_native_architectures_by_module_and_class(modelport_host):
    registry = modelport_host.registry
    for name, target in NATIVE.items():
        [entry] = registry.architectures(name)
        assert (entry.plugin, entry.target, entry.extra["impl"]) == ("modelport.builtin.native", target, "native")
    info = modelport_host.plugins["modelport.builtin.native"]
    assert info.builtin and info.hooks == ("modelport_register_architectures",)


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_core_alone_resolves_each_native_architecture(toy_format, toy_model, name):
    fields = {"num_local_experts": 4, "num_experts_per_tok": 2} if name.startswith("Mixtral") else {}
    resolved = modelport.resolve(str(toy_model(architectures=[name], **fields)))
    assert resolved.architecture.target == NATIVE[name]
    assert resolved.architecture.plugin == "modelport.builtin.native"
    assert resolved.model_impl == "native"


def test_core_alone_loads_the_native_llama(toy_format, toy_model):
    from modelport.models.llama import LlamaForCausalLM
    from modelport.models.protocol import CausalLM

    loaded = modelport.load(str(toy_model()), dtype="float32")
    assert type(loaded.model) is LlamaForCausalLM and isinstance(loaded.model, CausalLM)
    # The toy format's "dummy" load reads no weights: every parameter keeps its random initialisation.
    assert loaded.weights.loaded == () and loaded.weights.missing == ()
    assert "model.embed_tokens.weight" in loaded.weights.initialised


def test_model_impl_transformers_without_the_backend_names_native(toy_format, toy_model):
    with pytest.raises(UnsupportedArchitectureError) as info:
        modelport.resolve(str(toy_model()), model_impl="transformers")
    message = str(info.value)
    assert "LlamaForCausalLM" in message and "try model_impl='native'" in message


def test_an_unregistered_architecture_lists_what_is_registered(toy_format, toy_model):
    with pytest.raises(UnsupportedArchitectureError) as info:
        modelport.resolve(str(toy_model(architectures=["GPTNeoXForCausalLM"])))
    message = str(info.value)
    assert "GPTNeoXForCausalLM" in message
    assert all(repr(name) in message for name in NATIVE)
    assert "modelport-transformers" in message  # the plugin that would serve it


def test_a_third_party_distribution_registers_an_architecture_that_load_uses(
    plugin_distribution, monkeypatch, toy_model
):
    dist = plugin_distribution("modelport-toynet", ARCH_PLUGIN, version="2.0.0")
    (dist.site / "toynet_model.py").write_text(ARCH_MODULE)
    monkeypatch.setenv("MODELPORT_PLUGINS", "modelport-toynet")
    reset_host()
    folder = toy_model(architectures=["ToyNetForCausalLM"])
    host = get_host()
    try:
        with host.plugin(ToyFormat(), "toy-format"):
            [entry] = host.registry.architectures("ToyNetForCausalLM")
            assert (entry.plugin, entry.target) == ("modelport-toynet", "toynet_model:ToyNet")
            resolved = modelport.resolve(str(folder))
            assert "toynet_model" not in sys.modules  # named, not imported, until a model is built
            loaded = modelport.load(str(folder), dtype="float32")
    finally:
        sys.modules.pop("toynet_model", None)
    assert resolved.architecture.plugin == "modelport-toynet"
    assert resolved.model_impl == "native"
    assert type(loaded.model).__name__ == "ToyNet" and type(loaded.model).__module__ == "toynet_model"
    assert loaded.model.hf_config.architectures == ["ToyNetForCausalLM"]
    [step] = loaded.trace.find("model")
    assert step.plugin == "modelport-toynet" and step.decision == "toynet_model:ToyNet"
    assert host.plugins["modelport-toynet"].version == "2.0.0"
    listed = {p["name"]: p for p in host.describe()}
    assert listed["modelport-toynet"]["registered"] == {"architecture": ["ToyNetForCausalLM"]}


def test_a_third_party_native_implementation_takes_precedence_over_cores(plugin_distribution, monkeypatch, toy_model):
    dist = plugin_distribution("modelport-toynet", ARCH_PLUGIN.replace("ToyNetForCausalLM", "LlamaForCausalLM"))
    (dist.site / "toynet_model.py").write_text(ARCH_MODULE)
    monkeypatch.setenv("MODELPORT_PLUGINS", "modelport-toynet")
    reset_host()
    host = get_host()
    try:
        with host.plugin(ToyFormat(), "toy-format"):
            resolved = modelport.resolve(str(toy_model()))
    finally:
        sys.modules.pop("toynet_model", None)
    assert (resolved.architecture.plugin, resolved.architecture.target) == ("modelport-toynet", "toynet_model:ToyNet")
