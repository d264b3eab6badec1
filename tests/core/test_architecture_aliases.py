"""vLLM's architecture aliases: registered through the architecture hook, served by the name they stand for.

vLLM 0.32's model registry maps legacy names (``LLaMAForCausalLM`` of the
decapoda checkpoints) and second names (``ChatGLMForConditionalGeneration``) onto
the implementation of another name; core carries the same table and the trace
says when an alias was used.
"""

from __future__ import annotations

import pytest
from toy_model import ToyFormat

import modelport
from modelport import hookimpl
from modelport.builtin.architectures import ARCHITECTURE_ALIASES
from modelport.errors import PluginError, UnsupportedArchitectureError
from modelport.registry import ALIAS_KIND, Registry


@pytest.fixture
def toy_format(modelport_host):
    with modelport_host.plugin(ToyFormat(), "toy-format"):
        yield modelport_host


def test_core_registers_vllms_aliases_through_the_architecture_hook(modelport_host):
    registry = modelport_host.registry
    aliases = {e.name: e for e in registry.of_kind(ALIAS_KIND)}
    assert set(aliases) == set(ARCHITECTURE_ALIASES)
    assert aliases["LLaMAForCausalLM"].plugin == "modelport.builtin.architectures"
    assert registry.alias_of("LLaMAForCausalLM") == "LlamaForCausalLM"
    assert registry.alias_of("ChatGLMForConditionalGeneration") == "ChatGLMModel"
    assert registry.alias_of("LlamaForCausalLM") is None
    [entry] = registry.architectures("LLaMAForCausalLM")  # the implementations of LlamaForCausalLM
    assert entry.target == "modelport.models.llama:LlamaForCausalLM"
    assert "LLaMAForCausalLM" not in registry.names("architecture")  # an alias is not an implementation
    info = modelport_host.plugins["modelport.builtin.architectures"]
    assert "modelport_register_architectures" in info.hooks


def test_the_legacy_llama_capitalisation_resolves_to_the_native_llama_and_the_trace_says_alias(toy_format, toy_model):
    """decapoda-research/llama-7b-hf names LLaMAForCausalLM: vLLM 0.32 runs it as LlamaForCausalLM."""
    resolved = modelport.resolve(str(toy_model(architectures=["LLaMAForCausalLM"])))
    assert resolved.architecture.name == "LLaMAForCausalLM"  # vLLM reports the config's name too
    assert resolved.architecture.target == "modelport.models.llama:LlamaForCausalLM"
    assert resolved.model_impl == "native"
    [step] = resolved.trace.find("architecture")
    assert step.plugin == "modelport.builtin.architectures"
    assert "LLaMAForCausalLM is an alias of LlamaForCausalLM (vLLM's registry)" in step.reason
    assert "alias" in resolved.trace.format()


def test_an_alias_loads_the_model_it_stands_for(toy_format, toy_model):
    from modelport.models.llama import LlamaForCausalLM

    loaded = modelport.load(str(toy_model(architectures=["LLaMAForCausalLM"])), dtype="float32")
    assert type(loaded.model) is LlamaForCausalLM


def test_a_name_with_its_own_implementation_is_not_treated_as_an_alias(modelport_host, toy_model):
    class OwnLlama:
        @hookimpl
        def modelport_register_architectures(self, register):
            register("LLaMAForCausalLM", "toy_model:ToyModel", impl="native")

    with modelport_host.plugin(ToyFormat(), "toy-format"), modelport_host.plugin(OwnLlama(), "own-llama"):
        resolved = modelport.resolve(str(toy_model(architectures=["LLaMAForCausalLM"])))
        assert resolved.architecture.target == "toy_model:ToyModel"
        assert "alias" not in resolved.trace.find("architecture")[0].reason
        assert modelport_host.registry.alias_of("LLaMAForCausalLM") is None


def test_an_alias_whose_name_has_no_implementation_stays_unsupported(toy_format, toy_model):
    """ExaoneMoEForCausalLM stands for ExaoneMoeForCausalLM, which core does not implement."""
    with pytest.raises(UnsupportedArchitectureError) as info:
        modelport.resolve(str(toy_model(architectures=["ExaoneMoEForCausalLM"])))
    assert "ExaoneMoEForCausalLM" in str(info.value)


def test_a_third_party_registers_an_alias_for_its_own_architecture(modelport_host, toy_model):
    class Acme:
        @hookimpl
        def modelport_register_architectures(self, register):
            register("AcmeForCausalLM", "toy_model:ToyModel", impl="native")
            register("ACMEForCausalLM", "AcmeForCausalLM", impl="alias", description="the 2023 spelling")

    with modelport_host.plugin(ToyFormat(), "toy-format"), modelport_host.plugin(Acme(), "acme"):
        resolved = modelport.resolve(str(toy_model(architectures=["ACMEForCausalLM"])))
    assert (resolved.architecture.target, resolved.architecture.plugin) == ("toy_model:ToyModel", "acme")
    assert "ACMEForCausalLM is an alias of AcmeForCausalLM" in resolved.trace.find("architecture")[0].reason


@pytest.mark.parametrize("target", ["", "LLaMAForCausalLM", "module:Class", None])
def test_a_malformed_alias_is_a_plugin_error_naming_the_plugin(target):
    register = Registry().registrar("architecture", "bad-plugin")
    with pytest.raises(PluginError, match="bad-plugin"):
        register("LLaMAForCausalLM", target, impl="alias")


def test_only_vllm_032s_pure_renames_are_carried():
    """Different models vLLM runs on one class, and names vLLM 0.32 no longer supports, are not aliases here."""
    for left_out in ("InternLM3ForCausalLM", "Ministral3ForCausalLM", "Cohere2ForCausalLM", "AquilaForCausalLM"):
        assert left_out not in ARCHITECTURE_ALIASES
    assert ARCHITECTURE_ALIASES == {
        "LLaMAForCausalLM": "LlamaForCausalLM",
        "ChatGLMForConditionalGeneration": "ChatGLMModel",
        "ExaoneMoEForCausalLM": "ExaoneMoeForCausalLM",
    }
