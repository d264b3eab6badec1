"""Detecting the ``mistral`` format from the files, and forcing it with ``config_format``."""

from __future__ import annotations

import json
import shutil

import pytest

import modelport
from modelport.errors import InvalidConfigError, WeightsMissingError


def test_a_mistral_native_folder_is_detected_as_mistral(mistral_model):
    _, folder = mistral_model()
    resolved = modelport.resolve(str(folder))
    assert resolved.config_format == "mistral"
    step = resolved.trace.find("format")[0]
    assert step.plugin == "modelport-mistral"
    assert "consolidated.safetensors" in step.reason
    assert resolved.weight_files.files == ("consolidated.safetensors",)
    assert resolved.weight_files.load_format == "mistral"


def test_auto_prefers_mistral_when_a_folder_holds_both_layouts(mistral_model):
    hf, folder = mistral_model(same_folder=True)
    assert folder == hf and (folder / "config.json").is_file()
    resolved = modelport.resolve(str(folder))
    assert resolved.config_format == "mistral"
    assert resolved.weight_files.files == ("consolidated.safetensors",)
    assert resolved.tokenizer is not None and resolved.tokenizer.files == ("tekken.json",)


def test_params_json_alone_is_not_enough_auto_falls_back_to_hf(mistral_model):
    _hf, folder = mistral_model(same_folder=True, weights=None, tokenizer=None)
    assert (folder / "params.json").is_file() and not list(folder.glob("consolidated*"))
    resolved = modelport.resolve(str(folder))
    assert resolved.config_format == "hf"
    assert resolved.weight_files.files == ("model.safetensors",)
    assert resolved.trace.find("format")[0].plugin == "modelport-hf"


def test_the_hf_format_on_a_folder_with_both_layouts_reads_only_the_hf_weights(mistral_model):
    _hf, folder = mistral_model(same_folder=True)
    resolved = modelport.resolve(str(folder), config_format="hf")
    assert resolved.config_format == "hf"
    assert resolved.weight_files.files == ("model.safetensors",)
    assert resolved.tokenizer is not None and resolved.tokenizer.mode == "hf"


def test_sharded_consolidated_weights_are_detected_with_their_index(mistral_model):
    _, folder = mistral_model(shards=2)
    resolved = modelport.resolve(str(folder))
    assert resolved.config_format == "mistral"
    assert resolved.weight_files.files == (
        "consolidated-00001-of-00002.safetensors",
        "consolidated-00002-of-00002.safetensors",
    )
    assert resolved.weight_files.index_file == "consolidated.safetensors.index.json"


def test_shards_without_their_index_are_not_detected_and_forcing_names_the_index(mistral_model):
    hf, folder = mistral_model(shards=2)
    (folder / "consolidated.safetensors.index.json").unlink()
    shutil.copy(hf / "config.json", folder / "config.json")
    assert modelport.resolve(str(folder), skip_tokenizer_init=True, load_format="dummy").config_format == "hf"
    with pytest.raises(WeightsMissingError) as caught:
        modelport.resolve(str(folder), config_format="mistral")
    assert "consolidated.safetensors.index.json" in str(caught.value)


def test_a_pth_checkpoint_is_detected(mistral_model):
    _, folder = mistral_model(weights="pth")
    resolved = modelport.resolve(str(folder))
    assert resolved.config_format == "mistral"
    assert resolved.weight_files.files == ("consolidated.00.pth",)


def test_forcing_mistral_without_params_json_lists_the_missing_files(tiny_model):
    folder = tiny_model()
    with pytest.raises(InvalidConfigError) as caught:
        modelport.resolve(str(folder), config_format="mistral")
    message = str(caught.value)
    assert "params.json" in message and "consolidated.safetensors" in message and "consolidated.00.pth" in message
    assert caught.value.file.endswith("params.json")


def test_forcing_mistral_with_params_but_no_consolidated_weights_names_them(mistral_model):
    _hf, folder = mistral_model(same_folder=True, weights=None)
    with pytest.raises(WeightsMissingError) as caught:
        modelport.resolve(str(folder), config_format="mistral")
    assert "consolidated.safetensors" in str(caught.value) and str(folder) in str(caught.value)
    # load_format=dummy needs no weight file at all.
    assert modelport.resolve(str(folder), config_format="mistral", load_format="dummy").weight_files.files == ()


def test_forcing_mistral_on_a_folder_with_both_layouts_reads_params_json(mistral_model):
    _hf, folder = mistral_model(same_folder=True, params={"vocab_size": 512})
    assert json.loads((folder / "config.json").read_text())["vocab_size"] != 512
    resolved = modelport.resolve(str(folder), config_format="mistral")
    assert resolved.hf_config.vocab_size == 512
