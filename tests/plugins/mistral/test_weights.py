"""Consolidated weights: names mapped, RoPE rows permuted, same logits as the Hugging Face original."""

from __future__ import annotations

import pytest
import torch

import modelport
from modelport.errors import WeightsCorruptError
from modelport.models.protocol import SequenceBatch
from modelport.testing.mistral_files import consolidated_name, to_interleaved_rope
from modelport_mistral.weights import from_interleaved_rope, hf_name

PROMPT = torch.tensor([1, 17, 42, 99, 7, 250, 3, 64, 128, 5, 300, 11])


def _logits(loaded):
    model = loaded.model
    cache = model.new_kv_cache(8, 4)
    batch = SequenceBatch(PROMPT, torch.arange(len(PROMPT)), [len(PROMPT)], [0], [[0, 1, 2]], all_logits=True)
    with torch.no_grad():
        return model.forward(batch, cache)


def _same_model(hf_folder, mistral_folder, **options):
    original = modelport.load(str(hf_folder), dtype="float32", skip_tokenizer_init=True)
    native = modelport.load(str(mistral_folder), dtype="float32", skip_tokenizer_init=True, **options)
    assert native.resolved.config_format == "mistral"
    assert native.weights.missing == () and native.weights.unexpected == ()
    assert sorted(native.weights.loaded) == sorted(original.weights.loaded)
    expected, got = _logits(original), _logits(native)
    assert got.shape == (len(PROMPT), original.resolved.facts.vocab_size)
    assert torch.equal(got, expected)
    return native


@pytest.mark.parametrize("architecture", ["llama", "mistral"])
def test_a_mistral_folder_gives_the_logits_of_the_hf_model_it_was_written_from(mistral_model, architecture):
    hf, folder = mistral_model(architecture=architecture)
    native = _same_model(hf, folder)
    assert native.resolved.architecture.name == "MistralForCausalLM"
    assert native.resolved.trace.find("weights_reader")[0].plugin == "modelport-mistral"


def test_a_mixtral_folder_maps_the_router_and_every_expert(mistral_model):
    hf, folder = mistral_model(architecture="mixtral")
    from safetensors import safe_open

    with safe_open(str(folder / "consolidated.safetensors"), "pt") as handle:
        names = set(handle.keys())
    assert {"layers.0.feed_forward.gate.weight", "layers.1.feed_forward.experts.3.w2.weight"} <= names
    native = _same_model(hf, folder)
    assert native.resolved.architecture.name == "MixtralForCausalLM"


def test_sharded_consolidated_weights_load_the_same(mistral_model):
    hf, folder = mistral_model(shards=3)
    _same_model(hf, folder)


def test_a_pth_checkpoint_loads_the_same_and_is_read_with_weights_only(mistral_model, monkeypatch):
    hf, folder = mistral_model(weights="pth")
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    _same_model(hf, folder)
    assert calls == [True]


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_a_pth_that_needs_unpickling_code_is_refused(mistral_model, capsys):
    _, folder = mistral_model(weights="pth")
    torch.save({"tok_embeddings.weight": _Payload()}, folder / "consolidated.00.pth")
    with pytest.raises(WeightsCorruptError) as caught:
        modelport.load(str(folder), skip_tokenizer_init=True)
    assert "weights_only=True" in str(caught.value) and "consolidated.00.pth" in str(caught.value)
    assert "unpickled code ran" not in capsys.readouterr().out


def test_load_format_pt_picks_the_pth_when_both_forms_are_there(mistral_model):
    hf, folder = mistral_model()
    from modelport.testing.mistral_files import make_mistral_folder

    make_mistral_folder(hf, folder, weights="pth", tokenizer=None)
    assert modelport.resolve(str(folder), skip_tokenizer_init=True).weight_files.files == ("consolidated.safetensors",)
    resolved = modelport.resolve(str(folder), skip_tokenizer_init=True, load_format="pt")
    assert resolved.weight_files.files == ("consolidated.00.pth",)
    _same_model(hf, folder, load_format="pt")


def test_tied_embeddings_load_without_an_output_matrix(mistral_model):
    hf, folder = mistral_model(sizes={"tie_word_embeddings": True})
    from safetensors import safe_open

    with safe_open(str(folder / "consolidated.safetensors"), "pt") as handle:
        assert "output.weight" not in handle.keys()
    native = _same_model(hf, folder)
    assert native.resolved.hf_config.tie_word_embeddings is True


def test_a_truncated_consolidated_file_is_reported_as_corrupt(mistral_model):
    _, folder = mistral_model()
    data = (folder / "consolidated.safetensors").read_bytes()
    (folder / "consolidated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsCorruptError) as caught:
        modelport.load(str(folder), skip_tokenizer_init=True)
    assert "consolidated.safetensors" in str(caught.value)


@pytest.mark.parametrize(
    ("mistral", "hf"),
    [
        ("tok_embeddings.weight", "model.embed_tokens.weight"),
        ("norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        ("layers.3.attention.wq.weight", "model.layers.3.self_attn.q_proj.weight"),
        ("layers.3.attention.wk.weight", "model.layers.3.self_attn.k_proj.weight"),
        ("layers.3.attention.wv.weight", "model.layers.3.self_attn.v_proj.weight"),
        ("layers.3.attention.wo.weight", "model.layers.3.self_attn.o_proj.weight"),
        ("layers.3.attention_norm.weight", "model.layers.3.input_layernorm.weight"),
        ("layers.3.ffn_norm.weight", "model.layers.3.post_attention_layernorm.weight"),
        ("layers.3.feed_forward.w1.weight", "model.layers.3.mlp.gate_proj.weight"),
        ("layers.3.feed_forward.w2.weight", "model.layers.3.mlp.down_proj.weight"),
        ("layers.3.feed_forward.w3.weight", "model.layers.3.mlp.up_proj.weight"),
        ("layers.3.feed_forward.gate.weight", "model.layers.3.block_sparse_moe.gate.weight"),
        ("layers.3.feed_forward.experts.7.w1.weight", "model.layers.3.block_sparse_moe.experts.7.w1.weight"),
    ],
)
def test_every_consolidated_name_maps_to_its_hf_name_and_back(mistral, hf):
    assert hf_name(mistral) == hf
    assert consolidated_name(hf) == mistral


def test_an_unknown_name_passes_through_unchanged():
    assert hf_name("vision_encoder.patch_conv.weight") == "vision_encoder.patch_conv.weight"


def test_the_rope_permutation_is_the_inverse_of_the_kits_and_pairs_rows_per_head():
    heads, head_dim, width = 2, 8, 3
    weight = torch.arange(heads * head_dim * width, dtype=torch.float32).reshape(heads * head_dim, width)
    interleaved = to_interleaved_rope(weight, heads)
    assert torch.equal(from_interleaved_rope(interleaved, heads), weight)
    # Head 0 in the interleaved layout: rows (0, 4), (1, 5)... of the half-split layout, side by side.
    assert [int(r) for r in interleaved[:8, 0] // width] == [0, 4, 1, 5, 2, 6, 3, 7]


def test_load_format_mistral_reads_the_consolidated_weights_under_an_hf_config(mistral_model):
    hf, folder = mistral_model(same_folder=True)
    loaded = modelport.load(str(folder), config_format="hf", load_format="mistral", dtype="float32")
    assert loaded.resolved.config_format == "hf"
    assert loaded.resolved.weight_files.files == ("consolidated.safetensors",)
    assert loaded.weights.missing == () and loaded.weights.unexpected == ()
    original = modelport.load(str(hf), config_format="hf", dtype="float32", skip_tokenizer_init=True)
    assert torch.equal(_logits(loaded), _logits(original))


def test_model_parallel_pth_parts_are_refused_by_name(mistral_model):
    _, folder = mistral_model(weights="pth")
    (folder / "consolidated.01.pth").write_bytes((folder / "consolidated.00.pth").read_bytes())
    with pytest.raises(WeightsCorruptError) as caught:
        modelport.resolve(str(folder), skip_tokenizer_init=True)
    assert "consolidated.00.pth, consolidated.01.pth" in str(caught.value) and "slices" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("layers.0.attention.wq.weight", [64]),
        ("layers.0.attention.wq.weight", []),
        ("layers.0.attention.wq.weight", [63, 64]),
        ("layers.1.attention.wk.weight", [2, 16, 64]),
    ],
)
def test_a_rotary_projection_the_permutation_cannot_reshape_names_file_tensor_and_shape(mistral_model, name, shape):
    from safetensors.torch import load_file, save_file

    _, folder = mistral_model()
    path = folder / "consolidated.safetensors"
    state = load_file(str(path))
    state[name] = torch.zeros(shape)
    save_file(state, str(path))
    with pytest.raises(WeightsCorruptError) as caught:
        modelport.load(str(folder), skip_tokenizer_init=True)
    assert str(path) in str(caught.value) and f"tensor {name!r} has shape {shape}" in str(caught.value)


def test_a_name_that_only_ends_like_a_rotary_projection_is_left_alone_and_reported_unexpected(mistral_model):
    from safetensors.torch import load_file, save_file

    _, folder = mistral_model()
    path = folder / "consolidated.safetensors"
    state = load_file(str(path))
    state["extra.attention.wq.weight"] = torch.zeros(5)
    save_file(state, str(path))
    loaded = modelport.load(str(folder), skip_tokenizer_init=True)
    assert loaded.weights.unexpected == ("extra.attention.wq.weight",)
