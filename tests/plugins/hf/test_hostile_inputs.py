"""Hostile model folders: files outside the folder, absurd config values, huge or deep JSON (issue 11).

Each test names the attack; each gets a typed error from ``modelport.errors``
naming the file (or entry), field and value, in milliseconds, before anything
is allocated.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

import modelport
from modelport.config_checks import DEFAULT_MAX_JSON_BYTES, MAX_JSON_BYTES_ENV, MAX_JSON_DEPTH
from modelport.errors import InvalidConfigError, TokenizerError, WeightsCorruptError, WeightsMissingError
from modelport.testing import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("hostile") / "m", num_hidden_layers=1)


@pytest.fixture
def model(tiny, tmp_path):
    folder = tmp_path / "inside" / "m"
    shutil.copytree(tiny, folder)
    return folder


def _edit_config(folder: Path, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(values)
    (folder / "config.json").write_text(json.dumps(config))


# --- point 1: containment ---------------------------------------------------------------------------------


def _sharded(folder: Path, shard: str) -> None:
    """Turn the folder into a sharded checkpoint whose index names ``shard`` for every tensor."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        names = list(handle.keys())
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, shard)}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("shard", ["../../outside.safetensors", "sub/../../outside.safetensors", "ABSOLUTE"])
def test_an_index_naming_a_shard_outside_the_folder_is_refused_naming_the_entry(model, shard):
    outside = model.parent.parent / "outside.safetensors"
    shutil.copy(model / "model.safetensors", outside)
    (model / "sub").mkdir()
    shard = str(outside) if shard == "ABSOLUTE" else shard
    _sharded(model, shard)
    (model / "model.safetensors").unlink()
    with pytest.raises(WeightsMissingError) as info:
        modelport.resolve(str(model), skip_tokenizer_init=True)
    assert repr(shard) in str(info.value) and "outside the model folder" in str(info.value)


def test_a_config_json_linking_outside_the_folder_is_refused_naming_the_entry(model):
    secret = model.parent.parent / "secret.json"
    secret.write_text((model / "config.json").read_text())
    (model / "config.json").unlink()
    (model / "config.json").symlink_to(secret)
    with pytest.raises(InvalidConfigError) as info:
        modelport.resolve(str(model), skip_tokenizer_init=True)
    assert "'config.json'" in str(info.value) and str(secret) in str(info.value)


def test_a_weight_file_linking_outside_the_folder_is_refused_before_it_is_read(model):
    elsewhere = model.parent.parent / "weights.safetensors"
    shutil.move(model / "model.safetensors", elsewhere)
    (model / "model.safetensors").symlink_to(elsewhere)
    with pytest.raises(WeightsMissingError) as info:
        modelport.load(str(model), skip_tokenizer_init=True)
    assert "'model.safetensors'" in str(info.value) and "outside the model folder" in str(info.value)


def test_a_tokenizer_file_linking_outside_the_folder_is_refused(model):
    elsewhere = model.parent.parent / "tokenizer.json"
    shutil.move(model / "tokenizer.json", elsewhere)
    (model / "tokenizer.json").symlink_to(elsewhere)
    with pytest.raises((InvalidConfigError, TokenizerError)) as info:
        modelport.load(str(model))
    assert "'tokenizer.json'" in str(info.value)


# --- point 2: config values ------------------------------------------------------------------------------------

BAD_VALUES = [
    ("rms_norm_eps", float("nan")),
    ("rms_norm_eps", 0.0),
    ("head_dim", -16),
    ("num_hidden_layers", -1),
    ("num_hidden_layers", 0),
    ("hidden_size", 0),
    ("vocab_size", -5),
    ("intermediate_size", 0),
    ("num_hidden_layers", 10**6),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_a_size_that_is_not_a_finite_positive_number_is_an_invalid_config_naming_field_and_value(model, field, value):
    _edit_config(model, **{field: value})
    with pytest.raises(InvalidConfigError) as info:
        modelport.resolve(str(model), skip_tokenizer_init=True)
    assert info.value.field == field and repr(value) in str(info.value) and str(model) in str(info.value)


def test_head_dim_zero_means_unset_as_in_published_configs(model):
    _edit_config(model, head_dim=0)
    assert modelport.resolve(str(model), skip_tokenizer_init=True).facts.head_dim == 16  # 64 / 4 heads


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 0])
def test_a_rope_theta_that_is_not_a_finite_positive_number_is_an_invalid_config(model, value):
    config = json.loads((model / "config.json").read_text())
    config["rope_parameters"]["rope_theta"] = value
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidConfigError) as info:
        modelport.resolve(str(model), skip_tokenizer_init=True)
    assert info.value.field == "rope_parameters.rope_theta" and repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("values", "load_format"),
    [
        ({"hidden_size": 2**63}, "auto"),
        ({"hidden_size": 2**63}, "dummy"),
        ({"num_hidden_layers": 4000, "hidden_size": 2**14}, "auto"),
        ({"num_hidden_layers": 4000, "hidden_size": 2**16}, "dummy"),
        ({"vocab_size": 10**15}, "auto"),
        ({"intermediate_size": 2**40, "hidden_size": 2**20}, "dummy"),
    ],
)
def test_a_config_far_larger_than_its_weights_or_memory_fails_in_milliseconds(model, values, load_format):
    _edit_config(model, **values)
    modelport.resolve(str(model), skip_tokenizer_init=True)  # nothing is allocated to resolve
    start = time.perf_counter()
    with pytest.raises(InvalidConfigError) as info:
        modelport.load(str(model), skip_tokenizer_init=True, load_format=load_format)
    assert time.perf_counter() - start < 2.0
    field, value = next(iter(values.items()))
    assert f"{field}={value}" in str(info.value)
    assert ("memory" if load_format == "dummy" else "weight files") in str(info.value)


def test_a_real_size_config_still_loads(model):
    loaded = modelport.load(str(model), skip_tokenizer_init=True, dtype="float32")
    assert loaded.weights.loaded and not loaded.weights.missing


# --- point 2: JSON size and depth -----------------------------------------------------------------------------


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 900, 100_000])
def test_a_deeply_nested_config_json_is_an_invalid_config_not_a_recursion_error(model, depth):
    (model / "config.json").write_text('{"model_type": "llama", "x": ' + _deep(depth) + "}")
    with pytest.raises(InvalidConfigError, match="nested more than") as info:
        modelport.resolve(str(model), skip_tokenizer_init=True)
    assert str(model / "config.json") in str(info.value)


def test_a_deeply_nested_shard_index_is_a_weights_error(model):
    (model / "model.safetensors.index.json").write_text('{"weight_map": ' + _deep(100_000) + "}")
    with pytest.raises(WeightsCorruptError) as info:
        modelport.resolve(str(model), skip_tokenizer_init=True)
    assert "model.safetensors.index.json" in str(info.value)


@pytest.mark.parametrize("name", ["tokenizer_config.json", "tokenizer.json"])
def test_a_deeply_nested_tokenizer_json_is_a_tokenizer_error(model, name):
    (model / name).write_text('{"x": ' + _deep(100_000) + "}")
    with pytest.raises(TokenizerError) as info:
        modelport.load(str(model))
    assert name in str(info.value)


def test_a_config_json_over_the_size_cap_is_refused_and_the_cap_can_be_raised(model, monkeypatch):
    config = json.loads((model / "config.json").read_text())
    config["padding"] = "x" * 4096
    (model / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv(MAX_JSON_BYTES_ENV, "4000")
    with pytest.raises(InvalidConfigError) as info:
        modelport.resolve(str(model), skip_tokenizer_init=True)
    assert str(model / "config.json") in str(info.value) and MAX_JSON_BYTES_ENV in str(info.value)
    monkeypatch.setenv(MAX_JSON_BYTES_ENV, "100000")
    assert modelport.resolve(str(model), skip_tokenizer_init=True).facts.hidden_size == 64


def test_the_default_size_cap_refuses_a_sparse_60_mib_config(model, monkeypatch):
    monkeypatch.delenv(MAX_JSON_BYTES_ENV, raising=False)
    with open(model / "config.json", "r+b") as handle:  # sparse: no 60 MiB written to disk
        handle.truncate(DEFAULT_MAX_JSON_BYTES + 10 * 2**20)
    start = time.perf_counter()
    with pytest.raises(InvalidConfigError, match="bytes modelport reads"):
        modelport.resolve(str(model), skip_tokenizer_init=True)
    assert time.perf_counter() - start < 1.0


def test_a_tokenizer_json_over_the_size_cap_is_a_tokenizer_error(model, monkeypatch):
    monkeypatch.setenv(MAX_JSON_BYTES_ENV, "1000")
    (model / "config.json").write_text((model / "config.json").read_text())  # under 1000 bytes
    with pytest.raises((TokenizerError, InvalidConfigError)) as info:
        modelport.load(str(model))
    assert ".json" in str(info.value) and MAX_JSON_BYTES_ENV in str(info.value)


def test_a_hub_cache_file_relinked_outside_the_cache_is_refused(tiny_repo, hub_server, tmp_path):
    resolved = modelport.resolve("org/tiny", skip_tokenizer_init=True)
    snapshot = resolved.source.snapshot_dir
    secret = tmp_path / "secret.json"
    secret.write_text((snapshot / "config.json").read_text())
    (snapshot / "config.json").unlink()
    (snapshot / "config.json").symlink_to(secret)
    with pytest.raises(InvalidConfigError) as info:
        modelport.resolve("org/tiny", skip_tokenizer_init=True, offline=True)
    assert "'config.json'" in str(info.value) and str(secret) in str(info.value)
    # The cache's own links (snapshot -> blobs) are what every other test loads through.
    (snapshot / "config.json").unlink()
    assert modelport.load("org/tiny").weights.loaded


# --- RoPE values, shard indexes and .bin entries of the wrong type (issue 11, second round) ---------------------


@pytest.mark.parametrize(
    ("rope", "field", "value"),
    [
        ({"rope_type": 5}, "rope_parameters.rope_type", 5),
        ({"rope_type": "yarn", "factor": "x", "original_max_position_embeddings": 64}, "rope_parameters.factor", "x"),
        ({"rope_type": "linear", "factor": [2.0]}, "rope_parameters.factor", [2.0]),
        ({"partial_rotary_factor": "x"}, "rope_parameters.partial_rotary_factor", "x"),
        ({"partial_rotary_factor": 5.0}, "rope_parameters.partial_rotary_factor", 5.0),
        ({"rope_type": "yarn", "factor": 4.0, "beta_fast": "fast"}, "rope_parameters.beta_fast", "fast"),
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 0.5}, None, 0.5),
    ],
)
def test_a_rope_value_of_the_wrong_type_is_an_invalid_config_before_the_model_is_built(model, rope, field, value):
    config = json.loads((model / "config.json").read_text())
    config["rope_parameters"].update(rope)
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidConfigError) as info:
        modelport.load(str(model), skip_tokenizer_init=True, dtype="float32")
    field = field or "rope_parameters.original_max_position_embeddings"
    assert info.value.field == field and repr(value) in str(info.value) and str(model) in str(info.value)


@pytest.mark.parametrize("fraction", [0.5, 1])
def test_a_partial_rotary_factor_in_range_still_loads(model, fraction):
    config = json.loads((model / "config.json").read_text())
    config["rope_parameters"]["partial_rotary_factor"] = fraction
    (model / "config.json").write_text(json.dumps(config))
    loaded = modelport.load(str(model), skip_tokenizer_init=True, dtype="float32")
    assert loaded.weights.loaded and loaded.resolved.hf_text_config.rope_parameters["partial_rotary_factor"] == fraction


def test_an_index_with_an_empty_weight_map_is_refused_not_read_as_random_weights(model):
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {}}))
    with pytest.raises(WeightsCorruptError) as info:
        modelport.load(str(model), skip_tokenizer_init=True)
    assert "model.safetensors.index.json" in str(info.value) and "'weight_map' is empty" in str(info.value)


def test_an_index_naming_a_shard_by_a_number_names_the_tensor_and_the_value(model):
    _sharded(model, "model.safetensors")
    index = json.loads((model / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = 5
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsCorruptError) as info:
        modelport.resolve(str(model), skip_tokenizer_init=True)
    assert "names 5 as the shard of 'lm_head.weight'" in str(info.value)


@pytest.mark.parametrize(("state", "shown"), [({"lm_head.weight": 5}, "'lm_head.weight' holds int"), ({1: "x"}, "1")])
def test_a_pytorch_checkpoint_entry_that_is_not_a_named_tensor_is_a_weights_error(model, state, shown):
    import torch

    (model / "model.safetensors").unlink()
    torch.save(state, model / "pytorch_model.bin")
    with pytest.raises(WeightsCorruptError) as info:
        modelport.load(str(model), skip_tokenizer_init=True)
    assert "pytorch_model.bin" in str(info.value) and f"entry {shown}" in str(info.value)


@pytest.mark.parametrize("stated", ["int8", "bool", "uint8"])
def test_a_checkpoint_dtype_that_is_not_floating_point_is_an_invalid_config_under_auto(model, stated):
    _edit_config(model, dtype=stated)
    with pytest.raises(InvalidConfigError) as info:
        modelport.load(str(model), skip_tokenizer_init=True)
    assert info.value.field == "dtype" and info.value.value == stated and str(model) in str(info.value)
    assert modelport.load(str(model), skip_tokenizer_init=True, dtype="float32").weights.loaded  # the way out


@pytest.fixture(scope="module")
def tiny_mixtral(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("hostile") / "mx", "mixtral", num_hidden_layers=1, tokenizer=False)


@pytest.mark.parametrize(
    ("per_token", "problem"), [(8, "more experts per token than the 4"), (0, "positive"), (-1, "positive")]
)
def test_experts_per_token_that_cannot_choose_among_the_experts_is_an_invalid_config(
    tiny_mixtral, tmp_path, per_token, problem
):
    folder = shutil.copytree(tiny_mixtral, tmp_path / "mx")
    _edit_config(folder, num_experts_per_tok=per_token)
    with pytest.raises(InvalidConfigError, match=problem) as info:
        modelport.resolve(str(folder), skip_tokenizer_init=True)
    assert info.value.field == "num_experts_per_tok" and info.value.value == per_token


def test_a_million_experts_over_a_file_of_four_fails_before_anything_is_allocated(tiny_mixtral, tmp_path):
    folder = shutil.copytree(tiny_mixtral, tmp_path / "mx")
    _edit_config(folder, num_local_experts=10**6)
    start = time.perf_counter()
    with pytest.raises(InvalidConfigError, match="num_experts=1000000") as info:
        modelport.load(str(folder), skip_tokenizer_init=True, dtype="float32")
    assert time.perf_counter() - start < 2.0 and "weight files" in str(info.value)
    assert modelport.load(str(tiny_mixtral), skip_tokenizer_init=True, dtype="float32").weights.loaded


@pytest.mark.parametrize("where", ["config.json", "hf_overrides"])
def test_an_infinite_rope_factor_is_an_invalid_config_at_resolve_not_an_overflow(model, where):
    rope = {"rope_type": "linear", "factor": float("inf"), "rope_theta": 10000.0}
    options = {"hf_overrides": {"rope_parameters": rope}} if where == "hf_overrides" else {}
    if where == "config.json":
        _edit_config(model, rope_parameters=rope)  # json writes Infinity, which Python's json reads back
    with pytest.raises(InvalidConfigError) as info:
        modelport.resolve(str(model), skip_tokenizer_init=True, **options)
    assert (info.value.field, info.value.value) == ("rope_parameters.factor", float("inf"))
    assert str(model) in str(info.value)
