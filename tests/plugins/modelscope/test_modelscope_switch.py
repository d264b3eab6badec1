"""Choosing the hub per call or by environment, with nothing patched globally: both hubs load in one process."""

from __future__ import annotations

import json

import pytest

import modelport
from modelport.errors import ReferenceNotFoundError


@pytest.fixture
def two_hubs(hub_server, modelscope_server, tiny_model):
    """``org/tiny`` on both hubs, told apart by max_position_embeddings (hf: 128, modelscope: 96)."""
    for server, length, name in ((hub_server, 128, "hf"), (modelscope_server, 96, "ms")):
        folder = tiny_model(name)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": length}))
        server.add_repo("org/tiny", folder)
    return hub_server, modelscope_server


def _globals() -> dict[str, object]:
    import huggingface_hub
    import huggingface_hub.constants
    import transformers.utils.hub

    return {
        "hf_hub_download": huggingface_hub.hf_hub_download,
        "snapshot_download": huggingface_hub.snapshot_download,
        "ENDPOINT": huggingface_hub.constants.ENDPOINT,
        "transformers.cached_file": transformers.utils.hub.cached_file,
    }


def test_one_process_loads_one_model_from_each_hub_and_patches_nothing(two_hubs):
    hub_server, modelscope_server = two_hubs
    before = _globals()

    from_ms = modelport.load("org/tiny", hub="modelscope")
    from_hf = modelport.load("org/tiny")
    again_ms = modelport.resolve("org/tiny", hub="modelscope")

    assert (from_hf.resolved.source.kind, from_hf.resolved.hf_config.max_position_embeddings) == ("hf", 128)
    assert (from_ms.resolved.source.kind, from_ms.resolved.hf_config.max_position_embeddings) == ("modelscope", 96)
    assert again_ms.hf_config.max_position_embeddings == 96
    assert from_hf.weights.missing == () and from_ms.weights.missing == ()
    assert hub_server.downloads("model.safetensors") == 1
    assert modelscope_server.downloads("model.safetensors") == 1
    assert _globals() == before


@pytest.mark.parametrize("variable", ["MODELPORT_USE_MODELSCOPE", "VLLM_USE_MODELSCOPE"])
def test_the_environment_switch_sends_ids_to_modelscope_and_hub_hf_overrides_it(two_hubs, monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    switched = modelport.resolve("org/tiny")
    assert switched.source.kind == "modelscope" and switched.hf_config.max_position_embeddings == 96
    step = next(s for s in switched.trace.steps if s.step == "source")
    assert "VLLM_USE_MODELSCOPE" in step.reason

    assert modelport.resolve("org/tiny", hub="hf").source.kind == "hf"
    monkeypatch.setenv(variable, "0")
    assert modelport.resolve("org/tiny").source.kind == "hf"


def test_local_paths_stay_local_whatever_the_hub(two_hubs, tiny_model, tmp_path, monkeypatch):
    hub_server, modelscope_server = two_hubs
    tiny_model("org/tiny")
    monkeypatch.chdir(tmp_path)
    assert modelport.resolve("org/tiny", hub="modelscope").source.kind == "local"
    assert modelscope_server.requests == [] and hub_server.requests == []


def test_a_tokenizer_reference_resolves_through_the_same_hub(two_hubs, tiny_model, modelscope_server):
    modelscope_server.add_repo("org/tok", tiny_model("tok", weights=None))
    resolved = modelport.resolve("org/tiny", hub="modelscope", tokenizer="org/tok")
    assert resolved.tokenizer.source.location == "modelscope:org/tok@master"


def test_without_the_plugin_hub_modelscope_is_not_quietly_served_by_the_hugging_face_hub(two_hubs, monkeypatch):
    from modelport.plugins import reset_host

    hub_server, _ = two_hubs
    monkeypatch.setenv("MODELPORT_PLUGINS", "modelport-hf")
    reset_host()
    with pytest.raises(ReferenceNotFoundError):
        modelport.resolve("org/tiny", hub="modelscope")
    assert hub_server.requests == []


def test_the_command_line_takes_hub_and_inspect_shows_the_modelscope_source(two_hubs, capsys):
    from modelport.cli import main

    assert main(["inspect", "org/tiny", "--hub", "modelscope", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["source"]["kind"] == "modelscope"
    assert shown["source"]["location"] == "modelscope:org/tiny@master"
    assert shown["options"]["hub"] == "modelscope"
    assert main(["inspect", "org/tiny", "--hub", "github"]) == 1
    assert "supported values: 'hf', 'modelscope'" in capsys.readouterr().err
