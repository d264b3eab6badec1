"""Fuzzing the readers of untrusted bytes: config.json and safetensors files.

Whatever the bytes, the answer is a config or one of modelport's typed errors
naming the file, never a bare exception from a library.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelport
from modelport.errors import InvalidConfigError, ModelportError, WeightsCorruptError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
KEYS = [
    "model_type",
    "architectures",
    "hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "max_position_embeddings",
    "rope_scaling",
    "rope_theta",
    "vocab_size",
    "text_config",
    "auto_map",
    "sliding_window",
    "torch_dtype",
    "quantization_config",
    "num_key_value_heads",
]
configs = st.fixed_dictionaries(
    {"model_type": st.sampled_from(["llama", "qwen2", "mistral", "gpt2", "chatglm", "RefinedWeb", "nope"])},
    optional={key: json_values for key in KEYS[1:]},
)


def _resolve(folder: Path):
    return modelport.resolve(str(folder), load_format="dummy", skip_tokenizer_init=True)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_any_bytes_as_config_json_give_a_typed_error(raw):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_bytes(raw)
        try:
            _resolve(Path(tmp))
        except InvalidConfigError as exc:
            assert str(Path(tmp) / "config.json") in str(exc)
        except ModelportError:
            pass


@FUZZ
@given(config=configs)
def test_any_json_config_gives_a_config_or_a_typed_error(config):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        try:
            resolved = _resolve(Path(tmp))
        except ModelportError:
            return
        assert resolved.max_model_len > 0
        assert resolved.config_format == "hf"


@pytest.fixture(scope="module")
def weights_model(tmp_path_factory):
    from modelport.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("fuzz") / "m", tokenizer=False, num_hidden_layers=1)


@FUZZ
@given(data=st.data())
def test_damaged_safetensors_give_a_weights_error_naming_the_file(weights_model, data):
    original = (weights_model / "model.safetensors").read_bytes()
    header_len = struct.unpack("<Q", original[:8])[0]
    how = data.draw(st.sampled_from(["truncate", "header", "length", "random"]))
    if how == "truncate":
        damaged = original[: data.draw(st.integers(0, len(original) - 1))]
    elif how == "header":
        at = data.draw(st.integers(8, 8 + header_len - 1))
        damaged = original[:at] + data.draw(st.binary(min_size=1, max_size=8)) + original[at + 1 :]
    elif how == "length":
        damaged = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1))) + original[8:]
    else:
        damaged = data.draw(st.binary(max_size=200))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "m"
        shutil.copytree(weights_model, folder)
        (folder / "model.safetensors").write_bytes(damaged)
        try:
            loaded = modelport.load(str(folder), skip_tokenizer_init=True, dtype="float32")
        except WeightsCorruptError as exc:
            assert str(folder / "model.safetensors") in str(exc)
            return
        except ModelportError:
            return
        # A change the format cannot notice (a byte inside a name or a value) still gives a complete report.
        assert loaded.weights.loaded or loaded.weights.unexpected
