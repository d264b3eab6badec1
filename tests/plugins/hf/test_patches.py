"""modelport-hf's config patches and the facts derived after them, on configs written to disk."""

from __future__ import annotations

import json

import pytest

import modelport
from modelport.errors import InvalidConfigError, InvalidOptionError
from modelport.types import ConfigPatch, PatchPhase

LONG = [1.0] * 4


def _write(folder, **fields):
    base = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
        "max_position_embeddings": 1024,
    }
    base.update(fields)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(base))
    return str(folder)


def _resolve(ref, **options):
    return modelport.resolve(ref, load_format="dummy", skip_tokenizer_init=True, **options)


def test_su_becomes_longrope_and_the_original_length_is_the_default(tmp_path):
    ref = _write(
        tmp_path / "m",
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        rope_scaling={"type": "su", "short_factor": LONG, "long_factor": LONG},
    )
    resolved = _resolve(ref)
    assert resolved.hf_text_config.rope_parameters["rope_type"] == "longrope"
    assert resolved.max_model_len == 4096
    assert _resolve(ref, max_model_len=131072).max_model_len == 131072
    assert resolved.trace.find("patch:legacy-rope")[0].decision == "changed rope_parameters"


def test_type_and_rope_type_that_disagree_are_an_error_naming_both(tmp_path):
    ref = _write(tmp_path / "m", rope_scaling={"type": "linear", "rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(InvalidConfigError) as info:
        _resolve(ref)
    message = str(info.value)
    assert str(tmp_path / "m") in message
    assert "field 'rope_scaling' = {'type': 'linear', 'rope_type': 'dynamic'}" in message


def test_aliases_of_one_scheme_are_not_a_conflict(tmp_path):
    ref = _write(
        tmp_path / "m",
        original_max_position_embeddings=512,
        rope_scaling={"type": "su", "rope_type": "longrope", "short_factor": LONG, "long_factor": LONG},
    )
    assert _resolve(ref).hf_text_config.rope_parameters["rope_type"] == "longrope"


def test_mrope_becomes_default_and_keeps_its_sections(tmp_path):
    config = {
        "model_type": "qwen2_vl",
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "text_config": {
            "model_type": "qwen2_vl_text",
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "num_hidden_layers": 1,
            "intermediate_size": 128,
            "max_position_embeddings": 2048,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        },
        "vision_config": {"depth": 1, "embed_dim": 32, "num_heads": 2, "hidden_size": 64},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    resolved = _resolve(str(tmp_path))
    params = resolved.hf_text_config.rope_parameters
    assert params["rope_type"] == "default"
    assert params["mrope_section"] == [2, 3, 3]
    assert resolved.facts.is_multimodal is True


def test_linear_factor_scales_the_context_once(tmp_path):
    ref = _write(tmp_path / "m", rope_scaling={"type": "linear", "factor": 4.0})
    resolved = _resolve(ref)
    assert resolved.max_model_len == 4096
    # Resolving again, or normalising an already-normalised config, must not scale twice.
    assert _resolve(ref).max_model_len == 4096
    with pytest.raises(InvalidOptionError, match=r"at most 4096 tokens \(max_position_embeddings x rope factor"):
        _resolve(ref, max_model_len=8192)


def test_yarn_keeps_the_stated_length_as_vllm_0_32_does(tmp_path):
    # vLLM 0.32 stopped multiplying the length by a YaRN factor (it had given 131072 here):
    # the config's own max_position_embeddings is the model's length.
    ref = _write(
        tmp_path / "m",
        max_position_embeddings=32768,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    )
    assert _resolve(ref).max_model_len == 32768


def test_llama3_scaling_leaves_the_length_alone(tmp_path):
    ref = _write(
        tmp_path / "m",
        max_position_embeddings=131072,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    assert _resolve(ref).max_model_len == 131072


def test_overridden_rope_values_are_normalised_like_any_others(tmp_path):
    ref = _write(tmp_path / "m")
    resolved = _resolve(ref, hf_overrides={"rope_scaling": {"type": "linear", "factor": 2.0}})
    assert resolved.hf_text_config.rope_parameters["rope_type"] == "linear"
    assert resolved.max_model_len == 2048
    steps = [s.step for s in resolved.trace]
    assert steps.index("overrides") < steps.index("patch:legacy-rope")


def test_override_can_change_model_type_before_the_class_is_chosen(tmp_path):
    ref = _write(tmp_path / "m", model_type="mistral", architectures=["MistralForCausalLM"])
    resolved = _resolve(ref, hf_overrides={"model_type": "llama"})
    assert type(resolved.hf_config).__name__ == "LlamaConfig"


class LegacyRotaryConfig:
    """Stands for a config class a plugin registers: legacy RoPE names, a sub-config under llm_config."""


def _legacy_classes():
    from transformers import PretrainedConfig

    class LegacyText(PretrainedConfig):
        model_type = "legacy-text"

    class LegacyModel(PretrainedConfig):
        model_type = "legacy-model"

        def __init__(self, llm_config=None, **kwargs):
            self.llm_config = LegacyText(**(llm_config or {}))
            super().__init__(**kwargs)

    return LegacyModel


def test_legacy_names_are_normalised_in_every_sub_config_and_remapped(tmp_path, modelport_host):
    import sys
    import types

    module = types.ModuleType("legacy_configs_for_test")
    module.LegacyModel = _legacy_classes()
    sys.modules[module.__name__] = module

    class RegistersLegacy:
        @modelport.hookimpl
        def modelport_register_config_classes(self, register):
            register("legacy-model", "legacy_configs_for_test:LegacyModel")

    config = {
        "model_type": "legacy-model",
        "architectures": ["LegacyForCausalLM"],
        "llm_config": {
            "hidden_size": 64,
            "num_attention_heads": 4,
            "max_position_embeddings": 512,
            "rotary_emb_base": 50000,
            "rotary_pct": 0.25,
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    try:
        with modelport_host.plugin(RegistersLegacy(), "legacy"):
            resolved = _resolve(str(tmp_path))
    finally:
        del sys.modules[module.__name__]
    text = resolved.hf_text_config
    assert type(text).__name__ == "LegacyText"  # llm_config was remapped to text_config
    assert text.rope_parameters == {"rope_type": "default", "rope_theta": 50000, "partial_rotary_factor": 0.25}
    assert text.partial_rotary_factor == 0.25
    assert resolved.max_model_len == 512
    assert resolved.facts.head_dim == 16


def test_per_architecture_fixups_run_only_for_their_architectures(tmp_path, modelport_host):
    seen = []

    class Fixups:
        @modelport.hookimpl
        def modelport_register_config_patches(self, register):
            register(
                ConfigPatch(
                    "mistral-only",
                    PatchPhase.ARCHITECTURE_FIXUP,
                    lambda config, context: seen.append(config.model_type),
                    architectures=("MistralForCausalLM",),
                )
            )

    with modelport_host.plugin(Fixups(), "fixups"):
        llama = _resolve(_write(tmp_path / "llama"))
        _resolve(_write(tmp_path / "mistral", model_type="mistral", architectures=["MistralForCausalLM"]))
    assert seen == ["mistral"]
    assert not llama.trace.find("patch:mistral-only")


def test_refinedweb_config_becomes_falcon(tmp_path):
    config = {
        "model_type": "RefinedWebModel",
        "architectures": ["RWForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_RW.RWConfig"},
        "hidden_size": 64,
        "n_head": 4,
        "n_layer": 2,
        "multi_query": True,
        "vocab_size": 100,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    resolved = _resolve(str(tmp_path))
    assert type(resolved.hf_config).__name__ == "FalconConfig"
    assert resolved.architecture.name == "FalconForCausalLM"
    assert (resolved.facts.num_kv_heads, resolved.facts.head_dim) == (1, 16)
    assert resolved.trace.find("config")[0].decision == "RWModelConfig (model_type='RefinedWebModel')"


def test_registered_config_class_is_used_before_remote_code(tmp_path):
    config = {
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig"},
        "num_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "multi_query_attention": True,
        "multi_query_group_num": 2,
        "seq_length": 4096,
        "padded_vocab_size": 128,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    resolved = _resolve(str(tmp_path))
    assert resolved.hf_config.num_hidden_layers == 2
    assert resolved.max_model_len == 4096
    assert (resolved.facts.num_kv_heads, resolved.facts.vocab_size) == (2, 128)


def test_nested_overrides_reach_the_text_config_before_normalisation(tmp_path):
    config = {
        "model_type": "qwen2_vl",
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "text_config": {
            "model_type": "qwen2_vl_text",
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "num_hidden_layers": 1,
            "intermediate_size": 128,
            "max_position_embeddings": 2048,
        },
        "vision_config": {"depth": 1, "embed_dim": 32, "num_heads": 2, "hidden_size": 64},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    overrides = {
        "text_config": {
            "max_position_embeddings": 1000,
            "rope_scaling": {"type": "su", "short_factor": LONG, "long_factor": LONG},
        }
    }
    resolved = _resolve(str(tmp_path), hf_overrides=overrides)
    assert resolved.hf_text_config.max_position_embeddings == 1000
    assert resolved.hf_text_config.rope_parameters["rope_type"] == "longrope"  # normalised after the override
    assert type(resolved.hf_config).__name__ == "Qwen2VLConfig"  # the parent config is untouched


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"sliding_window": [1.0, "0"]},
            "field 'sliding_window' = [1.0, '0']: expected window sizes or null per layer",
        ),
        ({"sliding_window": "4096"}, "field 'sliding_window' = '4096': expected a window size or null"),
        ({"num_local_experts": ["8"]}, "field 'num_local_experts' = ['8']: expected expert counts"),
    ],
)
def test_facts_from_malformed_values_are_invalid_config_errors_naming_the_folder(tmp_path, fields, message):
    ref = _write(tmp_path / "m", **fields)
    with pytest.raises(InvalidConfigError) as info:
        _resolve(ref)
    assert str(info.value) == f"invalid config in {tmp_path / 'm'}, {message}"


def test_a_text_config_the_model_type_does_not_parse_is_an_invalid_config_as_vllm_refuses_it(tmp_path):
    """mlc-llm's Ministral 3 preset: the top-level model_type is the text model's (ministral3), whose config
    class keeps text_config a plain dict; vLLM 0.32 fails ("text_config ... does not have num_attention_heads")
    and modelport resolved it with no heads and the 2048 default length."""
    text = {"model_type": "ministral3", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1}
    ref = _write(
        tmp_path / "m",
        model_type="ministral3",
        architectures=["Mistral3ForConditionalGeneration"],
        text_config={**text, "max_position_embeddings": 262144},
    )
    with pytest.raises(InvalidConfigError) as info:
        _resolve(ref)
    assert (info.value.file, info.value.field, info.value.value) == (ref, "text_config", "ministral3")
    assert "does not parse" in str(info.value)


def test_a_stated_rope_set_without_a_theta_gets_a_null_theta_as_in_vllm(tmp_path):
    """mlc-llm's GPT-J preset states rope_scaling {"rope_type": "gptj"} and no rope_theta; vLLM 0.32's
    standardisation gives {"rope_type": "gptj", "rope_theta": None}. A theta stated beside it still fills in."""
    gptj = {
        "model_type": "gptj",
        "architectures": ["GPTJForCausalLM"],
        "n_embd": 64,
        "n_head": 4,
        "n_layer": 1,
        "n_positions": 2048,
        "rotary_dim": 8,
        "vocab_size": 100,
    }
    (tmp_path / "gptj").mkdir()
    (tmp_path / "gptj" / "config.json").write_text(json.dumps({**gptj, "rope_scaling": {"rope_type": "gptj"}}))
    resolved = _resolve(str(tmp_path / "gptj"))
    assert resolved.hf_text_config.rope_parameters == {"rope_type": "gptj", "rope_theta": None}
    assert resolved.max_model_len == 2048
    ref = _write(tmp_path / "llama", rope_scaling={"rope_type": "linear", "factor": 2.0}, rope_theta=5e5)
    assert _resolve(ref).hf_text_config.rope_parameters == {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}
