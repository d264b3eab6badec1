"""params.json to a transformers config: each mapping, the corpus file against vLLM 0.32's adaptation, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import modelport
from modelport.errors import InvalidConfigError
from modelport_mistral.params import adapt_params, build_config

CORPUS = Path(__file__).resolve().parents[3].parent / "shared" / "corpus"
MISTRAL_7B = "mistralai_Mistral-7B-Instruct-v0.3__params.json"
BASE = {
    "dim": 64,
    "n_layers": 4,
    "head_dim": 16,
    "hidden_dim": 128,
    "n_heads": 4,
    "n_kv_heads": 2,
    "norm_eps": 1e-5,
    "vocab_size": 384,
    "rope_theta": 1000000.0,
}


def _config(**extra):
    fields, unknown = adapt_params({**BASE, **extra}, "params.json")
    return build_config(fields), unknown


def test_the_core_fields_are_renamed_as_vllm_renames_them():
    config, unknown = _config()
    assert type(config).__name__ == "MistralConfig" and config.architectures == ["MistralForCausalLM"]
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim, config.intermediate_size) == (64, 4, 16, 128)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (4, 2, 384)
    assert config.rms_norm_eps == 1e-5
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 1000000.0}
    assert config.hidden_act == "silu" and config.tie_word_embeddings is False
    assert config.sliding_window is None
    assert unknown == []


def test_missing_head_dim_and_kv_heads_are_derived():
    fields, _ = adapt_params({k: v for k, v in BASE.items() if k not in ("head_dim", "n_kv_heads")}, "p")
    assert fields["head_dim"] == 16 and fields["num_key_value_heads"] == 4


def test_max_seq_len_defaults_to_128000_as_vllm_and_a_stated_length_is_kept():
    config, _ = _config()
    assert config.max_position_embeddings == 128_000 and config.max_seq_len == 128_000
    config, _ = _config(max_seq_len=32768)
    assert config.max_position_embeddings == 128_000 and config.max_seq_len == 32768
    fields, _ = adapt_params(BASE, "p", hf_max_position_embeddings=4096)
    assert fields["max_position_embeddings"] == 4096 and fields["max_seq_len"] == 4096


def test_max_position_embeddings_comes_from_a_config_json_beside_params_json(mistral_model):
    _, folder = mistral_model(same_folder=True, drop_params=["max_seq_len"])
    assert json.loads((folder / "config.json").read_text())["max_position_embeddings"] == 256
    resolved = modelport.resolve(str(folder))
    assert resolved.hf_config.max_position_embeddings == 256 and resolved.max_model_len == 256
    assert "max_position_embeddings=256 from config.json" in resolved.trace.find("config")[0].reason
    _, alone = mistral_model("alone", drop_params=["max_seq_len"])
    assert modelport.resolve(str(alone)).max_model_len == 128_000


def test_an_int_sliding_window_makes_every_layer_slide():
    config, _ = _config(sliding_window=4096)
    assert config.sliding_window == 4096 and config.layer_types == ["sliding_attention"] * 4


def test_a_per_layer_sliding_window_list_is_repeated_over_the_layers():
    config, _ = _config(sliding_window=[None, 1024])
    assert config.sliding_window == 1024
    assert config.layer_types == ["full_attention", "sliding_attention"] * 2


@pytest.mark.parametrize(
    ("window", "detail"),
    [([512, 1024], "one window size"), ([None, None, 8], "must divide n_layers"), ("wide", "integer or a list")],
)
def test_a_bad_sliding_window_names_the_field(window, detail):
    with pytest.raises(InvalidConfigError) as caught:
        _config(sliding_window=window)
    assert caught.value.field == "sliding_window" and detail in str(caught.value)


def test_tied_embeddings_ties_the_head():
    config, _ = _config(tied_embeddings=True)
    assert config.tie_word_embeddings is True


def test_moe_makes_a_mixtral_config():
    config, unknown = _config(moe={"num_experts": 8, "num_experts_per_tok": 2})
    assert type(config).__name__ == "MixtralConfig" and config.architectures == ["MixtralForCausalLM"]
    assert (config.num_local_experts, config.num_experts_per_tok) == (8, 2)
    assert unknown == []
    config, unknown = _config(moe={"num_experts": 8, "num_experts_per_tok": 2, "expert_hidden_dim": 64})
    assert config.moe == {"expert_hidden_dim": 64} and unknown == ["moe.expert_hidden_dim"]


def test_shared_experts_are_refused_by_name():
    with pytest.raises(InvalidConfigError) as caught:
        _config(moe={"num_experts": 8, "num_experts_per_tok": 2, "num_shared_experts": 1})
    assert caught.value.field == "moe.num_shared_experts" and caught.value.value == 1


def test_yarn_becomes_yarn_rope_parameters_as_vllm_spells_them():
    config, _ = _config(
        yarn={"factor": 4, "original_max_position_embeddings": 4096, "beta": 32, "alpha": 1, "apply_scale": False}
    )
    assert config.rope_parameters == {
        "rope_type": "yarn",
        "mscale_all_dim": 1,
        "rope_theta": 1000000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 4096,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "attention_factor": 1.0,
    }
    with pytest.raises(InvalidConfigError) as caught:
        _config(yarn={"factor": 4, "ramp": 2})
    assert caught.value.field == "yarn.ramp"


def test_llama_4_scaling_is_kept_and_needs_both_keys():
    config, _ = _config(llama_4_scaling={"original_max_position_embeddings": 8192, "beta": 0.1})
    assert config.llama_4_scaling == {"original_max_position_embeddings": 8192, "beta": 0.1}
    with pytest.raises(InvalidConfigError) as caught:
        _config(llama_4_scaling={"beta": 0.1})
    assert caught.value.field == "llama_4_scaling.original_max_position_embeddings"


@pytest.mark.parametrize(("scheme", "activation"), [("NO_SCALES", "dynamic"), ("TENSOR", "static"), (None, "static")])
def test_fp8_quantization_becomes_a_quantization_config(scheme, activation):
    config, _ = _config(quantization={"qformat_weight": "fp8_e4m3", "qscheme_act": scheme})
    assert config.quantization_config == {"quant_method": "fp8", "activation_scheme": activation}


def test_compressed_tensors_pass_through_and_unknown_quantization_is_refused():
    config, _ = _config(quantization={"quant_method": "compressed_tensors", "format": "pack-quantized"})
    assert config.quantization_config == {"quant_method": "compressed-tensors", "format": "pack-quantized"}
    with pytest.raises(InvalidConfigError) as caught:
        _config(quantization={"qformat_weight": "int3"})
    assert caught.value.field == "quantization"


@pytest.mark.parametrize("key", ["vision_encoder", "multimodal"])
def test_a_vision_encoder_makes_a_pixtral_config_with_text_and_vision_parts(key):
    vision = {"hidden_size": 32, "num_hidden_layers": 2, "image_size": 64, "patch_size": 16}
    value = {"vision_encoder_args": vision} if key == "multimodal" else vision
    config, _ = _config(**{key: value, "quantization": {"qformat_weight": "fp8_e4m3"}})
    assert config.architectures == ["PixtralForConditionalGeneration"]
    text = config.get_text_config()
    assert type(text).__name__ == "MistralConfig" and text.hidden_size == 64
    assert config.vision_config.hidden_size == 32 and config.vision_config.patch_size == 16
    assert config.quantization_config == {"quant_method": "fp8", "activation_scheme": "static"}


def test_unknown_keys_are_kept_on_the_config_and_named_in_the_trace(mistral_model):
    _, folder = mistral_model(params={"lora": {"rank": 8}, "model_parallel": 2})
    resolved = modelport.resolve(str(folder))
    assert resolved.hf_config.lora == {"rank": 8} and resolved.hf_config.model_parallel == 2
    assert "unknown keys kept: lora, model_parallel" in resolved.trace.find("config")[0].reason
    _, plain = mistral_model("plain")
    assert "no unknown keys" in modelport.resolve(str(plain)).trace.find("config")[0].reason


@pytest.mark.parametrize(
    ("key", "value"), [("dim", None), ("n_layers", 0), ("n_heads", "4"), ("vocab_size", True), ("norm_eps", -1)]
)
def test_a_bad_or_missing_field_names_the_file_field_and_value(mistral_model, key, value):
    _, folder = mistral_model(
        params={key: value} if value is not None else None, drop_params=[key] if value is None else []
    )
    with pytest.raises(InvalidConfigError) as caught:
        modelport.resolve(str(folder))
    assert caught.value.field == key and str(folder / "params.json") in str(caught.value)
    if value is not None:
        assert caught.value.value == value


def test_a_params_json_that_is_not_json_is_reported_with_line_and_column(mistral_model):
    _, folder = mistral_model()
    (folder / "params.json").write_text('{"dim": 64,\n "n_layers": }')
    with pytest.raises(InvalidConfigError) as caught:
        modelport.resolve(str(folder))
    assert "line 2" in str(caught.value) and "params.json" in str(caught.value)


# --- the corpus: a published params.json against vLLM 0.32's adaptation ------------------------------------------

#: Keys of vLLM's dict that are PretrainedConfig bookkeeping, not the model's.
_BOOKKEEPING = {
    "transformers_version",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "dtype",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "id2label",
    "label2id",
    "problem_type",
    "_name_or_path",
    "model_type",
}


@pytest.fixture
def corpus():
    if not (CORPUS / "mistral" / MISTRAL_7B).is_file():
        pytest.skip(f"the real-world corpus is absent ({CORPUS})")
    params = json.loads((CORPUS / "mistral" / MISTRAL_7B).read_text())
    expected = json.loads((CORPUS / "expected" / "vllm-0.32" / "mistral" / MISTRAL_7B).read_text())
    return params, expected


def test_the_corpus_params_json_adapts_to_what_vllm_made_of_it(corpus):
    params, expected = corpus
    fields, unknown = adapt_params(params, MISTRAL_7B)
    config = build_config(fields)
    vllm = expected["get_config_mistral_format"]
    assert config.architectures == vllm["architectures"]
    for key, value in vllm["dict"].items():
        if key in _BOOKKEEPING:
            continue
        if key == "rope_theta":  # transformers 5 keeps it inside rope_parameters
            assert config.rope_parameters["rope_theta"] == value
            continue
        assert getattr(config, key) == value, key
    assert config.rope_parameters == vllm["rope_parameters"]
    assert unknown == []
    # Deliberate difference: a MistralConfig (model_type "mistral"), not vLLM's generic "transformer" config.
    assert vllm["model_type"] == "transformer" and config.model_type == "mistral"


def test_the_corpus_model_resolves_to_vllms_model_config_facts(corpus, tmp_path):
    from safetensors.torch import save_file

    params, expected = corpus
    folder = tmp_path / "mistral-7b"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(params))
    save_file({}, str(folder / "consolidated.safetensors"))  # vLLM's "header-only consolidated" case
    resolved = modelport.resolve(str(folder), skip_tokenizer_init=True)
    facts = expected["model_config_auto_headeronly_consolidated"]
    assert resolved.config_format == "mistral"
    assert resolved.architecture.name == facts["architecture"]
    assert resolved.max_model_len == facts["max_model_len"]
    assert resolved.dtype == facts["dtype"].removeprefix("torch.")
    assert resolved.facts.head_dim == facts["head_dim"]
    assert resolved.facts.num_kv_heads == facts["num_kv_heads"]
    assert resolved.facts.hidden_size == facts["hidden_size"]
    assert resolved.facts.vocab_size == facts["vocab_size"]
    assert resolved.facts.num_hidden_layers == facts["num_hidden_layers"]
    assert resolved.hf_text_config.sliding_window == facts["sliding_window"]


def test_a_pixtral_folder_resolves_to_a_typed_architecture_error_naming_it(mistral_model):
    from modelport.errors import UnsupportedArchitectureError

    _, folder = mistral_model(params={"vision_encoder": {"hidden_size": 32, "image_size": 64, "patch_size": 16}})
    with pytest.raises(UnsupportedArchitectureError) as caught:
        modelport.resolve(str(folder))
    assert "PixtralForConditionalGeneration" in str(caught.value)
