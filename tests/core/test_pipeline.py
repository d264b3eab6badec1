"""resolve() and load() through the real host with the toy format plugin."""

from __future__ import annotations

import pytest

import modelport
from modelport.errors import (
    InvalidOptionError,
    PluginError,
    ReferenceNotFoundError,
    TokenizerError,
    UnsupportedArchitectureError,
    UnsupportedFormatError,
)
from modelport.types import ConfigPatch, PatchPhase


def test_resolve_exposes_every_documented_field(toy_native, toy_model):
    folder = toy_model()
    resolved = modelport.resolve(str(folder))
    assert resolved.reference == str(folder)
    assert resolved.source.kind == "local" and resolved.source.location == str(folder)
    assert resolved.config_format == "toy"
    assert type(resolved.hf_config).__name__ == "LlamaConfig"
    assert resolved.hf_text_config is resolved.hf_config
    assert resolved.architecture.name == "LlamaForCausalLM"
    assert resolved.architecture.target == "toy_model:ToyModel"
    assert resolved.architecture.plugin == "toy-architectures"
    assert resolved.model_impl == "native"
    assert resolved.dtype == "bfloat16"  # no dtype in the config means float32, which vLLM runs as bfloat16
    assert (resolved.facts.head_dim, resolved.facts.num_kv_heads, resolved.facts.runner) == (8, 2, "generate")
    assert resolved.max_model_len == 512
    assert resolved.tokenizer.files == ("toy-tokenizer.txt",)
    assert resolved.weight_files.load_format == "dummy"
    data = resolved.to_dict()
    assert data["architecture"]["name"] == "LlamaForCausalLM"
    assert data["config_format"] == "toy"


def test_trace_says_who_decided_what_and_why(toy_native, toy_model):
    resolved = modelport.resolve(str(toy_model()))
    steps = {s.step: s for s in resolved.trace}
    assert [s.step for s in resolved.trace] == [
        "source",
        "format",
        "config",
        "facts",
        "architecture",
        "tokenizer",
        "weights",
    ]
    assert steps["source"].plugin == "modelport.builtin.local"
    assert steps["source"].reason == "an existing local folder"
    assert steps["format"].plugin == "toy-format" and steps["format"].decision == "toy"
    assert steps["format"].reason == "toy.json present"
    assert steps["architecture"].plugin == "modelport.builtin.architectures"
    assert "native" in steps["architecture"].reason
    assert steps["weights"].reason == "toy models have no weights"
    assert all(s.seconds >= 0 for s in resolved.trace)
    assert "toy-format" in steps["format"].asked
    assert "toy.json present" in resolved.trace.format()


def test_load_builds_the_model_and_reports_weights(toy_native, toy_model):
    loaded = modelport.load(str(toy_model()), dtype="bfloat16")
    assert loaded.model.dtype == "bfloat16" and loaded.model.device == "cpu"
    # The toy format reads no weight file (like dummy): what the model did not fill is initialised, not missing.
    assert loaded.weights.missing == () and loaded.weights.initialised == ("embed.weight",)
    assert loaded.tokenizer == ["hello", "world"]
    assert [s.step for s in loaded.trace][-4:] == ["model", "weights_reader", "load_weights", "tokenizer_load"]


def test_hf_overrides_dict_reaches_the_config_before_patches(toy_native, toy_model):
    seen = {}

    def record(config, context):
        seen["vocab_size"] = config.vocab_size

    class Recorder:
        @modelport.hookimpl
        def modelport_register_config_patches(self, register):
            register(ConfigPatch("record", PatchPhase.LEGACY_ROPE, record))

    with toy_native.plugin(Recorder(), "recorder"):
        resolved = modelport.resolve(str(toy_model()), hf_overrides={"vocab_size": 777, "max_position_embeddings": 64})
    assert seen["vocab_size"] == 777
    assert resolved.max_model_len == 64
    step = resolved.trace.find("overrides")[0]
    assert step.decision == "applied hf_overrides: max_position_embeddings, vocab_size"
    assert step.reason == "changed max_position_embeddings, vocab_size"


def test_patch_returning_something_else_than_a_config_is_a_plugin_error(toy_native, toy_model):
    class Bad:
        @modelport.hookimpl
        def modelport_register_config_patches(self, register):
            register(ConfigPatch("bad", PatchPhase.LEGACY_ROPE, lambda config, context: config.vocab_size))

    with toy_native.plugin(Bad(), "bad-patch"), pytest.raises(PluginError) as info:
        modelport.resolve(str(toy_model()))
    assert str(info.value) == "plugin 'bad-patch': config patch 'bad' returned int, not a config"


def test_hf_overrides_callable_takes_and_returns_the_config(toy_native, toy_model):
    def shrink(config):
        config.max_position_embeddings = 32
        return config

    assert modelport.resolve(str(toy_model()), hf_overrides=shrink).max_model_len == 32
    with pytest.raises(InvalidOptionError, match="returned None"):
        modelport.resolve(str(toy_model()), hf_overrides=lambda c: None)


def test_patches_run_by_phase_then_registration_order(toy_native, toy_model):
    order = []

    def patch(name):
        def apply(config, context):
            order.append(name)
            assert context.config_format == "toy"
            return config

        return apply

    class Patches:
        @modelport.hookimpl
        def modelport_register_config_patches(self, register):
            register(ConfigPatch("fixup", PatchPhase.ARCHITECTURE_FIXUP, patch("fixup")))
            register(ConfigPatch("rope", PatchPhase.LEGACY_ROPE, patch("rope")))
            register(ConfigPatch("remap-a", PatchPhase.ATTRIBUTE_REMAP, patch("remap-a")))
            register(ConfigPatch("remap-b", PatchPhase.ATTRIBUTE_REMAP, patch("remap-b")))

    with toy_native.plugin(Patches(), "patches"):
        resolved = modelport.resolve(str(toy_model()))
    assert order == ["rope", "remap-a", "remap-b", "fixup"]
    assert [s.step for s in resolved.trace.steps if s.step.startswith("patch:")] == [
        "patch:rope",
        "patch:remap-a",
        "patch:remap-b",
        "patch:fixup",
    ]
    assert resolved.trace.find("patch:rope")[0].decision == "no change"


def test_user_max_model_len_caps_and_cannot_exceed(toy_native, toy_model):
    assert modelport.resolve(str(toy_model()), max_model_len=100).max_model_len == 100
    with pytest.raises(InvalidOptionError, match="at most 512 tokens"):
        modelport.resolve(str(toy_model()), max_model_len=4096)


def test_unregistered_architecture_lists_registered_and_names_the_option(toy, toy_native, toy_model):
    with pytest.raises(UnsupportedArchitectureError) as info:
        modelport.resolve(str(toy_model(architectures=["GPTNeoXForCausalLM"])))
    message = str(info.value)
    assert "GPTNeoXForCausalLM" in message
    assert "registered: " in message and "'LlamaForCausalLM'" in message
    with pytest.raises(UnsupportedArchitectureError, match="try model_impl='native'"):
        modelport.resolve(str(toy_model()), model_impl="transformers")


def test_folder_in_no_known_format_lists_formats_and_files(toy, tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"\0")
    with pytest.raises(UnsupportedFormatError) as info:
        modelport.resolve(str(tmp_path))
    assert str(tmp_path) in str(info.value)
    assert "supported formats: 'toy'" in str(info.value)
    assert "weights.npz" in str(info.value)


def test_missing_local_path_is_reference_not_found(toy, tmp_path):
    with pytest.raises(ReferenceNotFoundError, match="no such file or folder"):
        modelport.resolve(str(tmp_path / "absent"))


def test_unrecognised_reference_names_who_was_asked(toy):
    with pytest.raises(ReferenceNotFoundError, match=r"asked: modelport\.builtin\.local"):
        modelport.resolve("some-org/some-model")


def test_skip_tokenizer_init_resolves_no_tokenizer(toy_native, toy_model, tmp_path):
    folder = toy_model()
    (folder / "toy-tokenizer.txt").unlink()
    with pytest.raises(TokenizerError, match="skip_tokenizer_init=True"):
        modelport.resolve(str(folder))
    resolved = modelport.resolve(str(folder), skip_tokenizer_init=True)
    assert resolved.tokenizer is None
    assert resolved.trace.find("tokenizer")[0].decision == "skipped"


def test_hf_config_path_takes_the_config_from_elsewhere(toy_native, toy_model):
    model = toy_model("model")
    other = toy_model("other", max_position_embeddings=99)
    resolved = modelport.resolve(str(model), hf_config_path=str(other))
    assert resolved.max_model_len == 99
    assert resolved.config_source.location == str(other)
    assert resolved.source.location == str(model)


def test_tokenizer_option_takes_the_tokenizer_from_elsewhere(toy_native, toy_model):
    model = toy_model("model")
    other = toy_model("tok")
    (other / "toy-tokenizer.txt").write_text("other words here")
    loaded = modelport.load(str(model), tokenizer=str(other))
    assert loaded.tokenizer == ["other", "words", "here"]
    assert loaded.trace.find("tokenizer_source")[0].decision == str(other)


def test_dtype_auto_follows_the_checkpoint(toy_native, toy_model):
    assert modelport.resolve(str(toy_model(dtype="bfloat16"))).dtype == "bfloat16"
    assert modelport.resolve(str(toy_model(dtype="bfloat16")), dtype="half").dtype == "float16"
