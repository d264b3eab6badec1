"""Configs from GGUF metadata alone, for every architecture this plugin registers a table for."""

from __future__ import annotations

import pytest

from modelport.errors import InvalidConfigError
from modelport_gguf.config import build_config
from modelport_gguf.header import read_header

COMMON = {
    "context_length": 4096,
    "embedding_length": 512,
    "block_count": 3,
    "feed_forward_length": 1024,
    "attention.head_count": 8,
    "attention.head_count_kv": 2,
    "rope.freq_base": 1e6,
    "attention.layer_norm_rms_epsilon": 1e-5,
}
#: GGUF architecture -> (extra metadata, expected (model_type, architecture), expected attribute values).
CASES = {
    "llama": ({"attention.key_length": 64}, ("llama", "LlamaForCausalLM"), {"head_dim": 64}),
    "mistral": ({"attention.sliding_window": 1024}, ("mistral", "MistralForCausalLM"), {"sliding_window": 1024}),
    "qwen2": ({}, ("qwen2", "Qwen2ForCausalLM"), {"num_key_value_heads": 2}),
    "qwen3": ({"attention.key_length": 128}, ("qwen3", "Qwen3ForCausalLM"), {"head_dim": 128}),
    "qwen2moe": (
        {"expert_count": 8, "expert_used_count": 2, "expert_feed_forward_length": 256},
        ("qwen2_moe", "Qwen2MoeForCausalLM"),
        {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 256},
    ),
    "qwen3moe": (
        {"expert_count": 16, "expert_used_count": 4, "expert_feed_forward_length": 128},
        ("qwen3_moe", "Qwen3MoeForCausalLM"),
        {"num_experts": 16, "num_experts_per_tok": 4, "moe_intermediate_size": 128},
    ),
    "gemma2": (
        {"attention.key_length": 64, "attention.sliding_window": 2048, "final_logit_softcapping": 30.0},
        ("gemma2", "Gemma2ForCausalLM"),
        {"head_dim": 64, "sliding_window": 2048, "final_logit_softcapping": 30.0},
    ),
    "gemma3": (
        {"attention.key_length": 64, "attention.sliding_window": 512},
        ("gemma3_text", "Gemma3ForCausalLM"),
        {"head_dim": 64, "sliding_window": 512},
    ),
    "phi3": (
        {"rope.scaling.original_context_length": 2048},
        ("phi3", "Phi3ForCausalLM"),
        {"original_max_position_embeddings": 2048},
    ),
    "starcoder2": (
        {"attention.layer_norm_epsilon": 1e-5},
        ("starcoder2", "Starcoder2ForCausalLM"),
        {"num_key_value_heads": 2},
    ),
    "gpt2": ({"attention.layer_norm_epsilon": 1e-5}, ("gpt2", "GPT2LMHeadModel"), {"n_embd": 512, "n_layer": 3}),
    "falcon": (
        {"attention.layer_norm_epsilon": 1e-5},
        ("falcon", "FalconForCausalLM"),
        {"num_kv_heads": 2, "hidden_size": 512, "parallel_attn": True},
    ),
}


def write_metadata(path, arch: str, values: dict, tokens: int = 300, **extra):
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch)
    for key, value in values.items():
        if isinstance(value, float):
            writer.add_float32(f"{arch}.{key}", value)
        else:
            writer.add_uint32(f"{arch}.{key}", value)
    for key, value in extra.items():
        writer.add_string(f"{arch}.{key}", value) if isinstance(value, str) else writer.add_float32(
            f"{arch}.{key}", value
        )
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(tokens)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


@pytest.fixture
def registry():
    from modelport.plugins import get_host

    return get_host().registry


@pytest.mark.parametrize("arch", sorted(CASES))
def test_each_architecture_becomes_its_transformers_config(tmp_path, registry, arch):
    extra, (model_type, architecture), expected = CASES[arch]
    path = write_metadata(tmp_path / f"{arch}.gguf", arch, {**COMMON, **extra})
    config, table, plugin = build_config(read_header(path), registry)
    assert (config.model_type, config.architectures, table, plugin) == (
        model_type,
        [architecture],
        arch,
        "modelport-gguf",
    )
    text = config.get_text_config()
    for attribute, value in expected.items():
        assert getattr(text, attribute) == pytest.approx(value), attribute
    assert text.vocab_size == 300 and (config.bos_token_id, config.eos_token_id) == (1, 2)
    if arch not in ("gpt2", "falcon"):
        assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (512, 3, 8)
        assert text.max_position_embeddings == 4096
        params = text.rope_parameters
        params = params.get("full_attention", params)  # per layer type (Gemma 3)
        assert params["rope_theta"] == pytest.approx(1e6)


def test_llama_with_experts_becomes_mixtral(tmp_path, registry):
    path = write_metadata(tmp_path / "moe.gguf", "llama", {**COMMON, "expert_count": 8, "expert_used_count": 2})
    config, table, _ = build_config(read_header(path), registry)
    assert (config.model_type, table, config.num_local_experts, config.num_experts_per_tok) == (
        "mixtral",
        "mixtral",
        8,
        2,
    )


def test_rope_scaling_comes_from_the_metadata(tmp_path, registry):
    values = {**COMMON, "rope.scaling.factor": 4.0, "rope.scaling.original_context_length": 1024}
    path = write_metadata(tmp_path / "yarn.gguf", "qwen2", values, **{"rope.scaling.type": "yarn"})
    config, _, _ = build_config(read_header(path), registry)
    params = config.rope_parameters
    assert (params["rope_type"], params["factor"], params["original_max_position_embeddings"]) == ("yarn", 4.0, 1024)


def test_a_count_that_is_not_a_positive_integer_is_named(tmp_path, registry):
    path = write_metadata(tmp_path / "bad.gguf", "llama", {**COMMON, "block_count": 0})
    with pytest.raises(InvalidConfigError, match=r"field 'llama\.block_count' = 0: expected a positive integer"):
        build_config(read_header(path), registry)


def test_the_corpus_files_configs(corpus, registry):
    """Real llama.cpp metadata: the vocabulary files carry their model's hyperparameters."""
    config, _, _ = build_config(read_header(corpus / "ggml-vocab-llama-spm.gguf"), registry)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size, config.rms_norm_eps) == (
        4096,
        32,
        32000,
        pytest.approx(1e-5),
    )
    config, _, _ = build_config(read_header(corpus / "ggml-vocab-starcoder.gguf"), registry)
    assert (config.model_type, config.num_key_value_heads, config.max_position_embeddings) == ("starcoder2", 2, 16384)


def test_metadata_the_strict_config_class_refuses_is_an_invalid_config_naming_the_gguf_key(tmp_path, registry):
    values = {k: v for k, v in COMMON.items() if k != "attention.layer_norm_rms_epsilon"}
    path = write_metadata(tmp_path / "eps.gguf", "llama", values, **{"attention.layer_norm_rms_epsilon": "x"})
    with pytest.raises(InvalidConfigError) as info:
        build_config(read_header(path), registry)
    assert (info.value.file, info.value.field, info.value.value) == (
        str(path),
        "llama.attention.layer_norm_rms_epsilon",
        "x",
    )


@pytest.mark.parametrize(("key", "value"), [("attention.head_count", 3), ("attention.key_length", 15)])
def test_sizes_the_config_class_finds_inconsistent_are_an_invalid_config_naming_the_file(
    tmp_path, registry, key, value
):
    path = write_metadata(tmp_path / "bad.gguf", "llama", {**COMMON, key: value})
    with pytest.raises(InvalidConfigError, match="does not make a llama config") as info:
        build_config(read_header(path), registry)
    assert info.value.file == str(path)


def test_per_layer_values_that_are_nested_arrays_are_an_invalid_config_naming_the_key(tmp_path, registry):
    from gguf import GGUFValueType

    values = {k: v for k, v in COMMON.items() if k != "attention.head_count"}
    path = write_metadata(tmp_path / "nested.gguf", "llama", values)
    rewritten = tmp_path / "nested-heads.gguf"
    _with_key(path, rewritten, "llama.attention.head_count", [[8, 8], [8]], GGUFValueType.ARRAY, GGUFValueType.ARRAY)
    with pytest.raises(InvalidConfigError, match="not nested arrays") as info:
        build_config(read_header(rewritten), registry)
    assert (info.value.file, info.value.field) == (str(rewritten), "llama.attention.head_count")


def test_an_infinite_rope_scaling_factor_is_an_invalid_config_at_resolve(tmp_path):
    import modelport

    values = {**COMMON, "rope.scaling.factor": float("inf")}
    path = write_metadata(tmp_path / "inf.gguf", "llama", values, **{"rope.scaling.type": "linear"})
    with pytest.raises(InvalidConfigError) as info:
        modelport.resolve(str(path), skip_tokenizer_init=True)
    assert (info.value.field, info.value.value) == ("rope_parameters.factor", float("inf"))
    assert str(path) in str(info.value)


def _with_key(source, target, key, value, value_type, sub_type=None):
    """``source`` rewritten by gguf-py (reader, then writer) with ``key`` added: metadata only, no tensors."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(source)
    writer = GGUFWriter(target, reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), kind, sub_type=sub)
    writer.add_key_value(key, value, value_type, sub_type=sub_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return target
