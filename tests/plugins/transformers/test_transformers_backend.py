"""modelport-transformers: the backend serves what transformers implements, native wins under auto."""

from __future__ import annotations

import pytest
import torch

import modelport
from modelport.errors import UnsupportedArchitectureError
from modelport.plugins import PluginHost
from modelport_transformers.model import TransformersModel


@pytest.fixture
def host():
    return PluginHost(allow={"modelport-transformers"}, strict=True)


def _llama_config(**fields):
    from transformers import LlamaConfig

    base = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=50,
        architectures=["LlamaForCausalLM"],
    )
    base.update(fields)
    return LlamaConfig(**base)


def _select(host, config, model_impl="auto"):
    return host.call_first(
        "modelport_select_architecture", hf_config=config, model_impl=model_impl, registry=host.registry
    )


def test_serves_an_architecture_transformers_implements(host):
    answer = _select(host, _llama_config())
    assert answer.plugin == "modelport-transformers"
    assert answer.value.impl == "transformers"
    assert answer.value.target == "modelport_transformers.model:TransformersModel"
    assert "no native implementation is registered" in answer.reason


def test_steps_aside_for_a_native_implementation_under_auto(host):
    class Native:
        @modelport.hookimpl
        def modelport_register_architectures(self, register):
            register("LlamaForCausalLM", "somewhere:NativeLlama", impl="native")

    with host.plugin(Native(), "native-llama"):
        auto = _select(host, _llama_config())
        forced = _select(host, _llama_config(), model_impl="transformers")
    assert (auto.plugin, auto.value.target) == ("modelport.builtin.architectures", "somewhere:NativeLlama")
    assert (forced.plugin, forced.value.impl) == ("modelport-transformers", "transformers")


def test_does_not_answer_for_native_or_unknown_architectures(host):
    assert _select(host, _llama_config(), model_impl="native").value is None
    assert _select(host, _llama_config(architectures=["NoSuchModelForCausalLM"])).value is None


def test_model_loads_weights_and_reports_missing_and_unexpected():
    config = _llama_config()
    reference = TransformersModel.from_config(config, dtype="float32", device="cpu")
    state = {k: v.clone() for k, v in reference.module.state_dict().items()}
    dropped = "model.layers.0.mlp.up_proj.weight"
    del state[dropped]
    state["model.extra.weight"] = torch.zeros(2)
    model = TransformersModel.from_config(config, dtype="float32", device="cpu")
    report = model.load_weights(state.items())
    assert report.missing == (dropped,)
    assert report.unexpected == ("model.extra.weight",)
    assert model.module.state_dict()["model.embed_tokens.weight"].equal(state["model.embed_tokens.weight"])


def test_end_to_end_logits_equal_transformers(tiny_model, monkeypatch):
    pytest.importorskip("modelport_hf", reason="the end-to-end path needs modelport-hf to read the folder")
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("MODELPORT_PLUGINS", "modelport-hf,modelport-transformers")
    modelport.plugins.reset_host()
    folder = tiny_model()
    loaded = modelport.load(str(folder), dtype="float32")
    assert loaded.resolved.model_impl == "transformers"
    assert loaded.weights.missing == () and loaded.weights.unexpected == ()
    ids = loaded.tokenizer("The quick brown fox", return_tensors="pt").input_ids
    expected = AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits
    assert torch.equal(loaded.model.forward(ids), expected)


def test_native_only_without_native_implementation_names_the_option(tiny_model, monkeypatch):
    pytest.importorskip("modelport_hf", reason="needs modelport-hf to read the folder")
    monkeypatch.setenv("MODELPORT_PLUGINS", "modelport-hf,modelport-transformers")
    modelport.plugins.reset_host()
    with pytest.raises(UnsupportedArchitectureError) as info:
        modelport.resolve(str(tiny_model()), model_impl="native")
    assert "LlamaForCausalLM" in str(info.value) and "try model_impl='transformers'" in str(info.value)
