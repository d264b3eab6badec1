"""One test per branch of vLLM 0.32's ``_get_and_verify_max_len``, each stating vLLM's result.

The configs are transformers' own config classes (they normalise ``rope_scaling``
into ``rope_parameters`` as vLLM's loader does). The expected numbers were worked
out by hand from the source of the vllm 0.32.0 wheel on PyPI
(``vllm/config/model.py``: ``_get_and_verify_max_len``;
``vllm/transformers_utils/model_arch_config_convertor.py``: the keys), which
carries the YaRN change of vllm-project/vllm#56446: each test's name or docstring
says what vLLM gives. ``max_model_len=-1`` (vLLM's "fit to memory") and the
speculative-decoding target length have no counterpart in modelport.
"""

from __future__ import annotations

import json

import pytest
import transformers

import modelport
from modelport import hookimpl
from modelport.errors import InvalidConfigError, InvalidOptionError
from modelport.facts import DEFAULT_MAX_MODEL_LEN, derived_max_model_len, resolve_max_model_len


def plain(**fields):
    """A config of an unknown model type holding only ``fields`` (rope_parameters set as given)."""
    rope = fields.pop("rope_parameters", None)
    config = transformers.PretrainedConfig(**fields)
    config.model_type = fields.get("model_type", "custom")
    if rope is not None:
        config.rope_parameters = rope
    return config


# --- 1. the keys -----------------------------------------------------------------------------


def test_the_smallest_stated_length_wins_vllm_gives_4096():
    config = plain(max_position_embeddings=8192, max_seq_len=4096, seq_length=16384)
    assert derived_max_model_len(config) == (4096, "max_seq_len")
    assert resolve_max_model_len(None, config) == 4096


def test_gpt2_n_positions_vllm_gives_1024():
    assert resolve_max_model_len(None, transformers.GPT2Config(n_positions=1024)) == 1024


def test_model_max_length_overrides_even_when_larger_vllm_gives_131072():
    """Command-R, Cohere2, Aya Vision: vLLM takes model_max_length (131072) over max_position_embeddings (8192)."""
    config = plain(max_position_embeddings=8192, model_max_length=131072)
    assert derived_max_model_len(config) == (131072, "model_max_length")


# --- 2. no length stated -----------------------------------------------------------------------


def test_no_length_and_no_cap_vllm_gives_2048():
    assert resolve_max_model_len(None, plain()) == DEFAULT_MAX_MODEL_LEN == 2048


def test_no_length_takes_the_users_cap_unchecked_vllm_gives_100000():
    """vLLM returns the user's max_model_len before any check when the config states no length."""
    assert resolve_max_model_len(100_000, plain()) == 100_000


def test_no_length_with_a_linear_rope_factor_scales_the_default_vllm_gives_4096():
    config = plain(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    assert resolve_max_model_len(None, config) == 4096


# --- 3. RoPE scaling ---------------------------------------------------------------------------


def test_linear_factor_scales_vllm_gives_16384():
    config = transformers.LlamaConfig(max_position_embeddings=4096, rope_scaling={"type": "linear", "factor": 4.0})
    assert derived_max_model_len(config) == (16384, "max_position_embeddings x rope factor")


def test_dynamic_factor_scales_vllm_gives_8192():
    config = transformers.LlamaConfig(max_position_embeddings=4096, rope_scaling={"type": "dynamic", "factor": 2.0})
    assert resolve_max_model_len(None, config) == 8192


def test_llama3_factor_does_not_scale_vllm_gives_131072():
    config = transformers.LlamaConfig(
        max_position_embeddings=131072,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    assert resolve_max_model_len(None, config) == 131072


def _phi3_longrope() -> transformers.Phi3Config:
    return transformers.Phi3Config(
        hidden_size=3072,
        num_attention_heads=32,
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        rope_scaling={"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48},
    )


def test_longrope_does_not_scale_and_defaults_to_the_original_length_vllm_gives_4096():
    """Phi-3.5: vLLM derives 131072 but defaults to original_max_position_embeddings (4096)."""
    config = _phi3_longrope()
    assert derived_max_model_len(config)[0] == 131072
    assert resolve_max_model_len(None, config) == 4096


def test_longrope_accepts_a_cap_up_to_the_derived_length_vllm_gives_131072():
    assert resolve_max_model_len(131072, _phi3_longrope()) == 131072


def test_yarn_factor_does_not_scale_max_position_embeddings_vllm_032_gives_32768():
    """Qwen2.5 with YaRN added (factor 4, original 32768): vLLM 0.32 gives 32768.

    Before vllm-project/vllm#56446 vLLM gave original_max_position_embeddings x factor = 131072;
    0.32 follows transformers, for which max_position_embeddings is already the scaled length.
    """
    config = transformers.Qwen2Config(
        max_position_embeddings=32768,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    )
    assert derived_max_model_len(config) == (32768, "max_position_embeddings")
    with pytest.raises(InvalidOptionError, match="at most 32768"):
        resolve_max_model_len(131072, config)


def test_yarn_as_deepseek_states_it_vllm_gives_163840():
    """DeepSeek-V3/R1: max_position_embeddings 163840 = 4096 x 40, both before and after vLLM's YaRN change."""
    config = plain(
        max_position_embeddings=163840,
        rope_parameters={
            "rope_type": "yarn",
            "factor": 40,
            "original_max_position_embeddings": 4096,
            "rope_theta": 10000,
        },
    )
    assert resolve_max_model_len(None, config) == 163840


@pytest.mark.parametrize(
    ("rope_type", "stated", "original", "factor"),
    [("deepseek_yarn", 131072, 4096, 40), ("telechat3-yarn", 32768, 8192, 4)],
)
def test_yarn_vendor_spellings_are_not_scaled_again_vllm_032_gives_the_stated_length(
    rope_type, stated, original, factor
):
    """sarvam-105b (deepseek_yarn): vLLM 0.32 gives 131072 (5,242,880 before); TeleChat3: 32768 (131072 before)."""
    config = plain(
        max_position_embeddings=stated,
        rope_parameters={
            "rope_type": rope_type,
            "factor": factor,
            "original_max_position_embeddings": original,
            "rope_theta": 10000,
        },
    )
    assert resolve_max_model_len(None, config) == stated


def test_deepseek_llama_scaling_does_not_scale_vllm_gives_131072():
    config = plain(
        max_position_embeddings=131072,
        rope_parameters={"rope_type": "deepseek_llama_scaling", "factor": 16.0, "rope_theta": 10000},
    )
    assert resolve_max_model_len(None, config) == 131072


def test_a_null_factor_falls_back_to_one_vllm_gives_4096():
    """vLLM warns about ``factor: null`` and multiplies by 1."""
    config = plain(max_position_embeddings=4096, rope_parameters={"rope_type": "linear", "factor": None})
    assert resolve_max_model_len(None, config) == 4096


def test_a_layer_type_without_rope_does_not_count_vllm_gives_8192():
    config = plain(
        max_position_embeddings=4096,
        rope_parameters={"full_attention": {"rope_type": "dynamic", "factor": 2.0}, "sliding_attention": {}},
    )
    assert resolve_max_model_len(None, config) == 8192


def test_gemma3_states_the_scaled_length_vllm_gives_131072():
    config = transformers.Gemma3TextConfig(
        max_position_embeddings=131072, rope_scaling={"rope_type": "linear", "factor": 8.0}
    )
    assert "full_attention" in config.rope_parameters  # per layer type, the factor on full attention
    assert resolve_max_model_len(None, config) == 131072


def test_rope_per_layer_type_scales_by_the_stated_factor_vllm_gives_8192():
    """Not Gemma 3: vLLM multiplies by the factor of the layer types that state one (all are assumed equal)."""
    config = plain(
        max_position_embeddings=4096,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    )
    assert resolve_max_model_len(None, config) == 8192


def test_a_malformed_factor_is_a_typed_error_where_vllm_multiplies_it():
    config = plain(max_position_embeddings=4096, rope_parameters={"rope_type": "linear", "factor": "two"})
    with pytest.raises(InvalidConfigError) as info:
        resolve_max_model_len(None, config)
    assert info.value.field == "rope_parameters.factor"


# --- 4. caps the engine adds -------------------------------------------------------------------


def test_disabled_sliding_window_caps_the_length_vllm_gives_4096():
    config = plain(max_position_embeddings=32768)
    assert derived_max_model_len(config, sliding_window_cap=4096) == (4096, "sliding_window")
    assert derived_max_model_len(config, sliding_window_cap=65536)[0] == 32768


def test_tokenizer_model_max_length_caps_a_pooling_model_vllm_gives_512():
    """BERT-like pooling models with absolute positions: max_position_embeddings 514, tokenizer 512 -> 512."""
    config = transformers.RobertaConfig(max_position_embeddings=514)
    assert resolve_max_model_len(None, config, tokenizer_model_max_length=512) == 512


def test_sentence_transformers_max_seq_length_replaces_the_length_vllm_gives_256():
    config = transformers.BertConfig(max_position_embeddings=512)
    assert derived_max_model_len(config, encoder_max_seq_length=256) == (256, "encoder max_seq_length")


# --- 5. the user's cap -------------------------------------------------------------------------


def test_a_cap_within_the_length_is_kept_vllm_gives_1000():
    assert resolve_max_model_len(1000, transformers.LlamaConfig(max_position_embeddings=4096)) == 1000


def test_a_cap_above_the_length_is_an_error_naming_the_key_vllm_raises():
    with pytest.raises(InvalidOptionError) as info:
        resolve_max_model_len(8192, transformers.LlamaConfig(max_position_embeddings=4096))
    assert "at most 4096 tokens (max_position_embeddings in its config)" in str(info.value)


def test_a_cap_above_the_length_but_within_model_max_length_is_kept_vllm_gives_8000():
    """Derived 4096 (the disabled sliding window), but model_max_length 8192 allows 8000, as in vLLM."""
    config = plain(max_position_embeddings=32768, model_max_length=8192)
    assert resolve_max_model_len(8000, config, sliding_window_cap=4096) == 8000
    with pytest.raises(InvalidOptionError):
        resolve_max_model_len(9000, config, sliding_window_cap=4096)


def test_vllm_allow_long_max_model_len_is_not_honoured_on_purpose(monkeypatch):
    """vLLM accepts any cap with VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 (a warning); modelport keeps the error."""
    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    with pytest.raises(InvalidOptionError):
        resolve_max_model_len(8192, transformers.LlamaConfig(max_position_embeddings=4096))


# --- 6. the files beside the config, through resolve() -----------------------------------------


class _Encoders:
    @hookimpl
    def modelport_register_architectures(self, register):
        register("BertModel", "toy_model:ToyModel", impl="native")


@pytest.fixture
def encoders(toy):
    from modelport.testing import registered_plugin

    with registered_plugin(_Encoders(), "toy-encoders", host=toy):
        yield toy


def _pooling_model(toy_model, **fields):
    return toy_model(architectures=["BertModel"], position_embedding_type="absolute", **fields)


def test_resolve_caps_a_pooling_model_by_its_tokenizer_config_vllm_gives_500(encoders, toy_model):
    folder = _pooling_model(toy_model)
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 500}))
    assert modelport.resolve(str(folder)).max_model_len == 500


def test_resolve_ignores_the_tokenizer_config_of_a_generative_model_vllm_gives_512(toy_native, toy_model):
    folder = toy_model(position_embedding_type="absolute")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 500}))
    assert modelport.resolve(str(folder)).max_model_len == 512


def test_resolve_ignores_the_tokenizer_config_without_absolute_positions_vllm_gives_512(encoders, toy_model):
    folder = toy_model(architectures=["BertModel"])
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 500}))
    assert modelport.resolve(str(folder)).max_model_len == 512


def test_resolve_takes_sentence_transformers_max_seq_length_vllm_gives_256(encoders, toy_model):
    folder = _pooling_model(toy_model)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": False}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 500}))
    assert modelport.resolve(str(folder)).max_model_len == 256


def test_a_malformed_file_beside_the_config_is_a_typed_error_naming_it(encoders, toy_model):
    folder = _pooling_model(toy_model)
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(InvalidConfigError, match=r"tokenizer_config\.json"):
        modelport.resolve(str(folder))
