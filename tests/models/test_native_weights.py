"""Native models: building on a device, loading checkpoint names, reporting what did not match, bad input."""

from __future__ import annotations

import pytest
import torch
from native_harness import PagedRunner, one_thread, tiny_config

from modelport.errors import InvalidConfigError, WeightsCorruptError
from modelport.models.llama import LlamaForCausalLM, Qwen2ForCausalLM
from modelport.models.mixtral import MixtralForCausalLM
from modelport.models.protocol import CausalLM, SequenceBatch

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def _reference(config, seed=0):
    import transformers

    torch.manual_seed(seed)
    return getattr(transformers, config.architectures[0])(config).eval()


def _logits(model, ids):
    return PagedRunner(model).step({0: ids}, all_logits=True)


def test_built_on_the_device_in_the_dtype_and_keeps_the_protocol():
    model = LlamaForCausalLM.from_config(tiny_config("llama"), dtype="bfloat16", device="cpu")
    assert isinstance(model, CausalLM)
    # No memory until the weights arrive: they may become the parameters themselves.
    assert all(t.is_meta and t.dtype == torch.bfloat16 for t in model.parameters())
    assert model._rotary_embedding.inv_freq.dtype == torch.float32  # computed, not loaded, in full precision
    report = model.load_weights([])
    assert report.loaded == () and "model.norm.weight" in report.missing
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == "cpu" and t.dtype == torch.bfloat16 for t in tensors)
    cache = model.new_kv_cache(8, 4)
    assert cache.keys[0].dtype == torch.bfloat16 and cache.keys[0].shape == (8, 4, 2, 16)
    logits = _logits(model, torch.arange(3, 10))
    assert logits.shape == (7, 128) and logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_weights_load_by_checkpoint_name_and_the_report_is_exact():
    config = tiny_config("llama")
    state = dict(_reference(config).state_dict())
    dropped = "model.layers.0.mlp.up_proj.weight"
    del state[dropped]
    state["model.extra.weight"] = torch.zeros(2)
    model = LlamaForCausalLM.from_config(config, dtype="float32", device="cpu")
    report = model.load_weights(state.items())
    assert report.missing == (dropped,)
    assert sorted(report.unexpected) == ["model.extra.weight"]
    assert len(report.loaded) == len(dict(model.named_parameters())) - 1
    params = dict(model.named_parameters())
    assert params["model.embed_tokens.weight"].equal(state["model.embed_tokens.weight"])
    assert params[dropped].std() > 0  # a missing weight is initialised, not left empty
    # A tensor of the wrong shape is refused (issue 11), naming it and both shapes, not set aside.
    state["model.norm.weight"] = torch.ones(3)
    with pytest.raises(WeightsCorruptError, match=r"'model.norm.weight'.*expected shape \[64\].*found shape \[3\]"):
        LlamaForCausalLM.from_config(config, dtype="float32", device="cpu").load_weights(state.items())


def test_the_whole_checkpoint_gives_transformers_logits():
    config = tiny_config("qwen2")
    reference = _reference(config)
    model = Qwen2ForCausalLM.from_config(config, dtype="float32", device="cpu")
    report = model.load_weights(reference.state_dict().items())
    assert report.missing == () and report.unexpected == ()
    ids = torch.arange(3, 15)
    with torch.no_grad():
        expected = reference(ids[None]).logits[0]
    assert (_logits(model, ids) - expected).abs().max() < 1e-4


def test_tied_embeddings_fill_the_head_from_either_name():
    config = tiny_config("llama", tie_word_embeddings=True)
    reference = _reference(config)
    embedding = reference.model.embed_tokens.weight.detach()
    ids = torch.arange(3, 12)
    with torch.no_grad():
        expected = reference(ids[None]).logits[0]
    both = LlamaForCausalLM.from_config(config, dtype="float32", device="cpu")
    report = both.load_weights(reference.state_dict().items())
    assert report.missing == () and report.unexpected == () and "lm_head.weight" not in report.loaded
    head_only = LlamaForCausalLM.from_config(config, dtype="float32", device="cpu")
    state = {k: v for k, v in reference.state_dict().items() if k != "model.embed_tokens.weight"}
    state["lm_head.weight"] = embedding
    report = head_only.load_weights(state.items())
    assert report.missing == () and report.unexpected == ()
    for model in (both, head_only):
        assert model.lm_head is None
        assert (_logits(model, ids) - expected).abs().max() < 1e-4


def test_mixtral_loads_per_expert_and_fused_checkpoints_alike(tmp_path):
    from safetensors.torch import load_file

    config = tiny_config("mixtral")
    reference = _reference(config)
    reference.save_pretrained(tmp_path)
    per_expert = load_file(tmp_path / "model.safetensors")
    assert "model.layers.0.block_sparse_moe.experts.3.w1.weight" in per_expert  # what transformers writes
    fused = reference.state_dict()
    assert "model.layers.0.mlp.experts.gate_up_proj" in fused  # what transformers holds
    models = []
    for checkpoint in (per_expert, fused):
        model = MixtralForCausalLM.from_config(config, dtype="float32", device="cpu")
        report = model.load_weights(checkpoint.items())
        assert report.missing == () and report.unexpected == ()
        models.append(model)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        assert a.equal(b), name
    ids = torch.arange(3, 14)
    with torch.no_grad():
        expected = reference(ids[None]).logits[0]
    assert (_logits(models[0], ids) - expected).abs().max() < 1e-4


def test_a_missing_expert_piece_reports_its_fused_parameter_and_keeps_the_rest(tmp_path):
    from safetensors.torch import load_file

    config = tiny_config("mixtral")
    reference = _reference(config)
    reference.save_pretrained(tmp_path)
    checkpoint = load_file(tmp_path / "model.safetensors")
    del checkpoint["model.layers.1.block_sparse_moe.experts.2.w3.weight"]
    checkpoint["model.layers.1.block_sparse_moe.experts.9.w1.weight"] = torch.zeros(96, 64)  # no expert 9
    model = MixtralForCausalLM.from_config(config, dtype="float32", device="cpu")
    report = model.load_weights(checkpoint.items())
    assert report.missing == ("model.layers.1.mlp.experts.gate_up_proj",)
    assert report.unexpected == ("model.layers.1.block_sparse_moe.experts.9.w1.weight",)
    fused = dict(model.named_parameters())["model.layers.1.mlp.experts.gate_up_proj"]
    assert fused[2, :96].equal(checkpoint["model.layers.1.block_sparse_moe.experts.2.w1.weight"])
    assert fused[0, 96:].equal(checkpoint["model.layers.1.block_sparse_moe.experts.0.w3.weight"])


def test_an_unimplemented_rope_type_names_the_supported_ones():
    config = tiny_config("llama", rope_parameters={"rope_type": "proportional", "rope_theta": 10000.0})
    with pytest.raises(InvalidConfigError) as info:
        LlamaForCausalLM.from_config(config, dtype="float32", device="cpu")
    assert "proportional" in str(info.value) and "longrope" in str(info.value)
    assert info.value.field == "rope_parameters.rope_type"


def test_a_block_table_too_short_for_the_tokens_is_an_error():
    model = LlamaForCausalLM.from_config(tiny_config("llama"), dtype="float32", device="cpu")
    model.load_weights([])
    cache = model.new_kv_cache(4, 4)
    batch = SequenceBatch(torch.arange(6), torch.arange(6), [6], [0], [[0]])
    with pytest.raises(ValueError, match="cannot hold 6 tokens"):
        model.forward(batch, cache)
    uneven = SequenceBatch(torch.arange(6), torch.arange(6), [4], [0], [[0, 1]])
    with pytest.raises(ValueError, match="query_lens sum to 4"):
        model.forward(uneven, cache)


def test_weights_in_the_models_dtype_are_adopted_without_a_copy_and_others_are_converted():
    config = tiny_config("llama")
    source = LlamaForCausalLM.from_config(config, dtype="float32", device="cpu")
    source.load_weights([])
    state = {k: v.detach().clone() for k, v in source.state_dict().items()}
    model = LlamaForCausalLM.from_config(config, dtype="float32", device="cpu")
    report = model.load_weights(state.items())
    assert report.missing == () and report.unexpected == ()
    params = dict(model.named_parameters())
    assert all(params[name].data_ptr() == tensor.data_ptr() for name, tensor in state.items() if name in params)
    half = LlamaForCausalLM.from_config(config, dtype="bfloat16", device="cpu")
    half.load_weights(state.items())
    embed = dict(half.named_parameters())["model.embed_tokens.weight"]
    assert embed.dtype == torch.bfloat16 and embed.data_ptr() != state["model.embed_tokens.weight"].data_ptr()
    assert torch.equal(embed, state["model.embed_tokens.weight"].to(torch.bfloat16))
