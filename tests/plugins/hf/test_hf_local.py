"""modelport-hf on local folders written by the real libraries."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest

import modelport
from modelport.errors import (
    InvalidConfigError,
    RemoteCodeRequiredError,
    WeightsCorruptError,
    WeightsMissingError,
)


def test_resolve_reads_config_tokenizer_and_weights(tiny_model):
    folder = tiny_model()
    resolved = modelport.resolve(str(folder))
    assert resolved.config_format == "hf"
    assert type(resolved.hf_config).__name__ == "LlamaConfig"
    assert resolved.hf_config.hidden_size == 64
    assert resolved.max_model_len == 256
    assert resolved.tokenizer.mode == "hf"
    assert "tokenizer.json" in resolved.tokenizer.files
    assert resolved.weight_files.files == ("model.safetensors",)
    steps = {s.step: s for s in resolved.trace}
    assert steps["format"].plugin == "modelport-hf" and steps["format"].reason == "config.json present"
    assert steps["weights"].reason == "*.safetensors files (safetensors are preferred)"


def test_load_streams_every_tensor_of_the_checkpoint(tiny_model):
    from safetensors.torch import load_file

    folder = tiny_model()
    loaded = modelport.load(str(folder))
    expected = load_file(folder / "model.safetensors")
    assert sorted(loaded.model.weights) == sorted(expected)
    for name, tensor in expected.items():
        assert loaded.model.weights[name].equal(tensor)
    ids = loaded.tokenizer("Hello world")["input_ids"]
    assert loaded.tokenizer.decode(ids) == "Hello world"


def test_safetensors_are_preferred_over_bin(tiny_model):
    folder = tiny_model()
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    assert modelport.resolve(str(folder)).weight_files.files == ("model.safetensors",)


def test_bin_is_the_fallback_and_loads_with_weights_only(tiny_model):
    import torch

    folder = tiny_model(weights="bin")
    resolved = modelport.resolve(str(folder))
    assert resolved.weight_files.load_format == "pt"
    assert resolved.weight_files.files == ("pytorch_model.bin",)
    assert resolved.trace.find("weights")[0].reason == "no safetensors; PyTorch checkpoint fallback"
    loaded = modelport.load(str(folder))
    expected = torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert loaded.model.weights["model.embed_tokens.weight"].equal(expected["model.embed_tokens.weight"])


def test_only_the_shards_the_index_names_are_chosen(tiny_model):
    folder = tiny_model(max_shard_size="40KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    (folder / "consolidated.safetensors").write_bytes(b"never read")
    resolved = modelport.resolve(str(folder))
    assert resolved.weight_files.files == tuple(shards)
    assert resolved.weight_files.index_file == "model.safetensors.index.json"
    loaded = modelport.load(str(folder))
    assert sorted(loaded.model.weights) == sorted(index["weight_map"])


def test_dummy_reads_no_weight_file(tiny_model):
    folder = tiny_model(weights=None)
    resolved = modelport.resolve(str(folder), load_format="dummy", skip_tokenizer_init=True)
    assert resolved.weight_files.files == ()
    assert modelport.load(str(folder), load_format="dummy", skip_tokenizer_init=True).model.weights == {}


def test_config_only_folder_without_dummy_says_what_is_missing(tiny_model):
    folder = tiny_model(weights=None, tokenizer=False)
    with pytest.raises(WeightsMissingError) as info:
        modelport.resolve(str(folder), skip_tokenizer_init=True)
    assert str(folder) in str(info.value) and "load_format='dummy'" in str(info.value)
    with pytest.raises(WeightsMissingError, match=r"no \*\.safetensors files"):
        modelport.resolve(str(folder), skip_tokenizer_init=True, load_format="safetensors")


def test_malicious_pickle_never_runs(tiny_model, tmp_path):
    folder = tiny_model(weights=None, tokenizer=False)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"model.embed_tokens.weight": Exploit()}, handle)
    with pytest.raises(WeightsCorruptError) as info:
        modelport.load(str(folder), skip_tokenizer_init=True)
    assert "pytorch_model.bin" in str(info.value) and "weights_only=True" in str(info.value)
    assert not marker.exists()


def test_truncated_safetensors_is_a_weights_error_naming_the_file(tiny_model):
    folder = tiny_model(tokenizer=False)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsCorruptError) as info:
        modelport.load(str(folder), skip_tokenizer_init=True)
    assert str(folder / "model.safetensors") in str(info.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "the file is empty"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n", "Git LFS pointer"),
        (b'{\n  "model_type": "llama",\n  "hidden_size": 64,,\n}', "invalid JSON at line 3, column 21"),
        (b"[1, 2]", "expected a JSON object, found list"),
    ],
)
def test_unreadable_config_json_is_an_invalid_config_error(tmp_path, content, expected):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(InvalidConfigError) as info:
        modelport.resolve(str(tmp_path), load_format="dummy", skip_tokenizer_init=True)
    assert str(tmp_path / "config.json") in str(info.value)
    assert expected in str(info.value)


def test_unknown_model_type_names_field_and_value(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-model", "architectures": ["X"]}))
    with pytest.raises(InvalidConfigError) as info:
        modelport.resolve(str(tmp_path), load_format="dummy", skip_tokenizer_init=True)
    assert "field 'model_type' = 'no-such-model'" in str(info.value)


REMOTE_CONFIG = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from transformers import PretrainedConfig

class MarkerConfig(PretrainedConfig):
    model_type = "marker-model"
"""


def _remote_code_repo(folder, marker):
    folder.mkdir()
    (folder / "configuration_marker.py").write_text(REMOTE_CONFIG.format(marker=str(marker)))
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "marker-model",
                "architectures": ["MarkerForCausalLM"],
                "auto_map": {"AutoConfig": "configuration_marker.MarkerConfig"},
            }
        )
    )
    return folder


def test_remote_code_never_runs_without_trust_remote_code(tmp_path):
    marker = tmp_path / "marker.txt"
    folder = _remote_code_repo(tmp_path / "repo", marker)
    with pytest.raises(RemoteCodeRequiredError) as info:
        modelport.resolve(str(folder), load_format="dummy", skip_tokenizer_init=True)
    message = str(info.value)
    assert "configuration_marker.MarkerConfig" in message and "trust_remote_code=True" in message
    assert not marker.exists()


def test_remote_code_runs_with_trust_remote_code(tmp_path):
    # In a child process: transformers caches dynamic modules under HF_HOME, which must be private.
    marker = tmp_path / "marker.txt"
    folder = _remote_code_repo(tmp_path / "repo", marker)
    code = (
        "import modelport, sys\n"
        f"r = modelport.resolve({str(folder)!r}, load_format='dummy', skip_tokenizer_init=True, "
        "trust_remote_code=True)\n"
        "print(type(r.hf_config).__name__)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "MODELPORT_PLUGINS": "modelport-hf"}
    # The child has no test architecture registered: only the config matters here.
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert marker.read_text() == "ran"
    assert "MarkerForCausalLM" in proc.stderr  # the architecture error comes after the config was built


def test_listing_plugins_with_hf_loaded_stays_light():
    code = (
        "import contextlib, io, sys\nfrom modelport.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    main(['plugins'])\n"
        "print([m for m in ('torch', 'transformers', 'safetensors', 'huggingface_hub') if m in sys.modules])"
    )
    env = {**os.environ, "MODELPORT_PLUGINS": "modelport-hf,modelport-transformers"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_remote_code_naming_a_missing_module_is_an_invalid_config(tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "ghost", "auto_map": {"AutoConfig": "configuration_ghost.GhostConfig"}})
    )
    with pytest.raises(InvalidConfigError) as info:
        modelport.resolve(str(folder), load_format="dummy", skip_tokenizer_init=True, trust_remote_code=True)
    assert "field 'auto_map.AutoConfig' = 'configuration_ghost.GhostConfig'" in str(info.value)
    assert "configuration_ghost.py" in str(info.value)


def test_architectures_that_are_not_a_list_of_names_are_an_invalid_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": True}))
    with pytest.raises(InvalidConfigError, match="field 'architectures' = True: expected a list of architecture names"):
        modelport.resolve(str(tmp_path), load_format="dummy", skip_tokenizer_init=True)


@pytest.mark.parametrize(("stated", "expected"), [({"torch_dtype": "float16"}, "float16"), ({}, "bfloat16")])
def test_the_checkpoint_dtype_is_read_without_transformers_deprecation_warning(stated, expected, tiny_model, tmp_path):
    folder = tiny_model()
    config = json.loads((folder / "config.json").read_text())
    config.pop("dtype", None)
    config.pop("torch_dtype", None)
    (folder / "config.json").write_text(json.dumps({**config, **stated}))
    code = f"import modelport\nprint(modelport.resolve({str(folder)!r}).dtype)\n"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "MODELPORT_PLUGINS": "modelport-hf"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected
    # transformers warns each time its deprecated ``torch_dtype`` property is read
    assert "torch_dtype" not in proc.stderr
