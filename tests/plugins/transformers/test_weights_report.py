"""load() with the Transformers backend reports exactly which parameters no weight filled and which weights fit none."""

from __future__ import annotations

import pytest
import torch

import modelport
from modelport.errors import WeightsCorruptError, WeightsMissingError
from modelport_transformers.model import TransformersModel

pytest.importorskip("modelport_hf", reason="these tests read checkpoints through modelport-hf")

REMOVED = "model.layers.0.mlp.up_proj.weight"
RENAMED = "model.layers.1.self_attn.q_proj.weight"
RENAMED_TO = "model.layers.1.self_attn.query.weight"
IDS = torch.tensor([[1, 5, 7, 9, 11, 2]])


def _load(folder, **options):
    options.setdefault("dtype", "float32")  # the checkpoint's, as from_pretrained keeps it
    return modelport.load(str(folder), model_impl="transformers", skip_tokenizer_init=True, **options)


def _rewrite(folder, change):
    """Rewrite the folder's model.safetensors after ``change(state_dict)``."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    state = {name: tensor.clone() for name, tensor in load_file(path).items()}
    change(state)
    save_file(state, path, metadata={"format": "pt"})
    return state


def _from_pretrained(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_a_removed_and_a_renamed_tensor_are_listed_exactly(tiny_model):
    folder = tiny_model(tokenizer=False)

    def damage(state):
        del state[REMOVED]
        state[RENAMED_TO] = state.pop(RENAMED)

    state = _rewrite(folder, damage)
    # load() refuses a checkpoint that leaves parameters uninitialised, naming them (issue 11)...
    with pytest.raises(WeightsMissingError) as info:
        _load(folder)
    assert REMOVED in str(info.value) and RENAMED in str(info.value) and "2 parameter(s)" in str(info.value)
    # ...and the model's own report says exactly what happened.
    from safetensors.torch import load_file

    resolved = modelport.resolve(str(folder), model_impl="transformers", skip_tokenizer_init=True, dtype="float32")
    model = TransformersModel.from_config(resolved.hf_config, dtype="float32", device="cpu")
    report = model.load_weights(load_file(folder / "model.safetensors").items())
    assert report.missing == tuple(sorted([REMOVED, RENAMED]))
    assert report.unexpected == (RENAMED_TO,)
    assert report.loaded == tuple(sorted(set(state) - {RENAMED_TO}))
    assert report.initialised == ()
    module = model.module
    for name in report.loaded:
        assert torch.equal(module.get_parameter(name), state[name]), name
    for name in report.missing:  # initialised the way transformers initialises a Linear: N(0, 0.02)
        weight = module.get_parameter(name)
        assert not weight.is_meta and torch.isfinite(weight).all()
        assert 0.01 < weight.std().item() < 0.03


def test_a_weight_of_the_wrong_shape_is_a_weights_corrupt_error_naming_tensor_file_and_shapes(tiny_model):
    folder = tiny_model(tokenizer=False)
    _rewrite(folder, lambda state: state.update({"model.norm.weight": torch.ones(3)}))
    with pytest.raises(WeightsCorruptError) as info:
        _load(folder)
    message = str(info.value)
    assert "'model.norm.weight'" in message and str(folder / "model.safetensors") in message
    assert "expected shape [64]" in message and "found shape [3]" in message


@pytest.mark.parametrize("tied", [False, True])
def test_a_complete_checkpoint_misses_nothing_and_gives_from_pretrained_logits(tiny_model, tied):
    folder = tiny_model(tokenizer=False, tie_word_embeddings=tied)
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
    assert ("lm_head.weight" in names) is not tied  # a tied checkpoint leaves the tied side out
    loaded = _load(folder)
    assert loaded.weights.missing == () and loaded.weights.unexpected == ()
    assert set(loaded.weights.loaded) == names
    module = loaded.model.module
    assert (module.lm_head.weight is module.model.embed_tokens.weight) is tied
    with torch.no_grad():
        assert (loaded.model.forward(IDS) - _from_pretrained(folder)(IDS).logits).abs().max() < 1e-5  # float32 rounding


def test_a_tied_checkpoint_holding_both_sides_is_read_as_from_pretrained_reads_it(tiny_model):
    folder = tiny_model(tokenizer=False, tie_word_embeddings=True)

    def add_distinct_lm_head(state):
        state["lm_head.weight"] = state["model.embed_tokens.weight"] * 2

    state = _rewrite(folder, add_distinct_lm_head)
    loaded = _load(folder)
    assert loaded.weights.missing == () and loaded.weights.unexpected == ()
    assert "lm_head.weight" in loaded.weights.loaded
    module = loaded.model.module
    # Both sides present with different values: transformers leaves them untied, and so do we.
    assert module.lm_head.weight is not module.model.embed_tokens.weight
    assert torch.equal(module.lm_head.weight, state["lm_head.weight"])
    with torch.no_grad():
        assert (loaded.model.forward(IDS) - _from_pretrained(folder)(IDS).logits).abs().max() < 1e-5  # float32 rounding


def test_non_persistent_buffers_are_computed_never_read(tiny_model):
    folder = tiny_model(tokenizer=False)
    _rewrite(folder, lambda state: state.update({"model.rotary_emb.inv_freq": torch.zeros(8)}))
    loaded = _load(folder)
    assert loaded.weights.unexpected == ("model.rotary_emb.inv_freq",)
    assert loaded.weights.missing == ()
    inv_freq = loaded.model.module.model.rotary_emb.inv_freq
    assert torch.equal(inv_freq, _from_pretrained(folder).model.rotary_emb.inv_freq)
    assert inv_freq.dtype == torch.float32 and bool((inv_freq > 0).all())


class _WithBuffer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.register_buffer("scale", torch.full((4,), 3.0))
        self.register_buffer("cache", torch.zeros(2), persistent=False)


def test_persistent_buffers_are_weights_like_parameters():
    model = TransformersModel(_WithBuffer())
    report = model.load_weights([("linear.weight", torch.eye(4)), ("cache", torch.ones(2))])
    assert report.loaded == ("linear.weight",)
    assert report.missing == ("linear.bias", "scale")
    assert report.unexpected == ("cache",)
    report = TransformersModel(_WithBuffer()).load_weights([("scale", torch.ones(4))])
    assert report.missing == ("linear.bias", "linear.weight")


def test_dummy_reports_every_parameter_initialised_and_none_missing(tiny_model):
    folder = tiny_model(tokenizer=False, weights=None, tie_word_embeddings=True)
    loaded = _load(folder, load_format="dummy")
    module = loaded.model.module
    report = loaded.weights
    assert report.loaded == () and report.missing == () and report.unexpected == ()
    # Every parameter, the tied lm_head aside (it is the embedding).
    assert set(report.initialised) == set(module.state_dict()) - {"lm_head.weight"}
    assert module.lm_head.weight is module.model.embed_tokens.weight
    assert not any(p.is_meta for p in module.parameters())
    assert torch.equal(module.model.norm.weight, torch.ones(64))
    assert 0.01 < module.model.layers[0].mlp.up_proj.weight.std().item() < 0.03
    assert torch.equal(module.model.rotary_emb.inv_freq, _from_pretrained_config(folder).model.rotary_emb.inv_freq)
    assert "randomly initialised" in loaded.trace.find("load_weights")[0].decision
    assert loaded.model.forward(IDS).shape == (1, 6, 384)


def _from_pretrained_config(folder):
    from transformers import AutoConfig, AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))


def test_weights_in_the_models_dtype_are_adopted_without_a_copy(tiny_model):
    from safetensors import safe_open

    folder = tiny_model(tokenizer=False)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    config = _load(folder, load_format="dummy").resolved.hf_config
    same = TransformersModel.from_config(config, dtype="float32", device="cpu")
    same.load_weights(tensors.items())
    converted = TransformersModel.from_config(config, dtype="bfloat16", device="cpu")
    converted.load_weights(tensors.items())
    for name, tensor in tensors.items():
        assert same.module.get_parameter(name).data_ptr() == tensor.data_ptr(), name
        assert converted.module.get_parameter(name).data_ptr() != tensor.data_ptr(), name
        assert torch.equal(converted.module.get_parameter(name), tensor.to(torch.bfloat16)), name


def test_reading_the_module_before_any_weight_gives_an_initialised_model(tiny_model):
    folder = tiny_model(tokenizer=False, weights=None)
    config = _load(folder, load_format="dummy").resolved.hf_config
    model = TransformersModel.from_config(config, dtype="float32", device="cpu")
    assert not any(t.is_meta for t in model.module.state_dict().values())
    assert model.forward(IDS).shape == (1, 6, 384)
