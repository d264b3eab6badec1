"""Checkpoints that do not fit their config (issue 11, point 3): typed errors, never a half-random model.

A tensor whose shape or kind of dtype does not fit its parameter is a
WeightsCorruptError naming the tensor, its file, and the expected and found
shape; a load that leaves a parameter that no weight filled fails, unless the
load format reads no weights on purpose (dummy). Through load(), with the
native model and with the Transformers backend.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import modelport
from modelport.errors import WeightsCorruptError, WeightsMissingError
from modelport.testing import make_tiny_model

pytest.importorskip("modelport_hf", reason="the checkpoints are Hugging Face folders")

HAS_BACKEND = importlib.util.find_spec("modelport_transformers") is not None
IMPLS = ["native", pytest.param("transformers", marks=pytest.mark.skipif(not HAS_BACKEND, reason="no backend"))]


def _rewrite(path: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    state = {name: tensor.clone() for name, tensor in load_file(path).items()}
    change(state)
    save_file(state, path, metadata={"format": "pt"})


def _load(folder: Path, impl: str, **options):
    return modelport.load(str(folder), model_impl=impl, skip_tokenizer_init=True, dtype="float32", **options)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_tensor_of_the_wrong_shape_names_tensor_file_and_both_shapes(tmp_path, impl):
    folder = make_tiny_model(tmp_path / "m", tokenizer=False, num_hidden_layers=1)
    name = "model.layers.0.self_attn.q_proj.weight"
    _rewrite(folder / "model.safetensors", lambda s: s.update({name: torch.zeros(64, 32)}))
    with pytest.raises(WeightsCorruptError) as info:
        _load(folder, impl)
    message = str(info.value)
    assert repr(name) in message and str(folder / "model.safetensors") in message
    assert "expected shape [64, 64]" in message and "found shape [64, 32]" in message


@pytest.mark.parametrize("impl", IMPLS)
def test_integer_data_for_a_float_parameter_is_refused(tmp_path, impl):
    folder = make_tiny_model(tmp_path / "m", tokenizer=False, num_hidden_layers=1)
    name = "model.norm.weight"
    _rewrite(folder / "model.safetensors", lambda s: s.update({name: torch.ones(64, dtype=torch.int8)}))
    with pytest.raises(WeightsCorruptError) as info:
        _load(folder, impl)
    assert repr(name) in str(info.value) and "found shape [64] (integer, int8)" in str(info.value)


def test_the_error_names_the_shard_that_holds_the_bad_tensor(tmp_path):
    folder = make_tiny_model(tmp_path / "m", tokenizer=False, num_hidden_layers=2, max_shard_size="40KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    from safetensors import safe_open

    with safe_open(str(shards[-1]), framework="pt") as handle:
        name = next(k for k in handle.keys() if k.endswith("norm.weight"))
    _rewrite(shards[-1], lambda s: s.update({name: torch.ones(7)}))
    with pytest.raises(WeightsCorruptError) as info:
        _load(folder, "native")
    assert str(shards[-1]) in str(info.value) and repr(name) in str(info.value)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_checkpoint_that_leaves_a_parameter_uninitialised_fails_naming_it(tmp_path, impl):
    folder = make_tiny_model(tmp_path / "m", tokenizer=False, num_hidden_layers=1)
    name = "model.layers.0.mlp.up_proj.weight"
    _rewrite(folder / "model.safetensors", lambda s: s.pop(name))
    with pytest.raises(WeightsMissingError) as info:
        _load(folder, impl)
    assert name in str(info.value) and "1 parameter(s)" in str(info.value)


@pytest.mark.parametrize("impl", IMPLS)
def test_dummy_still_initialises_every_parameter_on_purpose(tmp_path, impl):
    folder = make_tiny_model(tmp_path / "m", tokenizer=False, num_hidden_layers=1)
    loaded = _load(folder, impl, load_format="dummy")
    assert loaded.weights.initialised and not loaded.weights.missing


def test_a_tied_head_the_checkpoint_leaves_out_is_not_missing(tmp_path):
    folder = make_tiny_model(tmp_path / "m", tokenizer=False, num_hidden_layers=1, tie_word_embeddings=True)
    loaded = _load(folder, "native")
    assert not loaded.weights.missing


def test_nan_weights_give_a_typed_error_when_a_token_is_sampled(tmp_path):
    from modelport.errors import ExecutorError

    folder = make_tiny_model(tmp_path / "m", num_hidden_layers=1, tokenizer=False)
    _rewrite(folder / "model.safetensors", lambda s: s["model.norm.weight"].fill_(float("nan")))
    llm = modelport.LLM(str(folder), skip_tokenizer_init=True, dtype="float32")
    with pytest.raises(ExecutorError, match="NaN or infinite"):
        llm.generate([[1, 5, 7]], modelport.SamplingParams(max_tokens=2, temperature=1.0))
