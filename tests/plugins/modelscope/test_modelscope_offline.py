"""Offline ModelScope loads: the cache only, no network call, and a miss that names the files."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

import modelport
from modelport.errors import DownloadError, OfflineMissError
from modelport.options import LoadOptions
from modelport_modelscope.source import ModelScopeSource


def _cache(tmp_path: Path) -> Path:
    return tmp_path / "modelscope_cache"


def test_a_loaded_model_loads_again_offline_with_no_connection_attempt(tiny_ms_repo, modelscope_server):
    online = modelport.load("org/tiny", hub="modelscope")
    modelscope_server.clear_requests()

    with modelscope_server.forbid_connections() as attempts:
        offline = modelport.load("org/tiny", hub="modelscope", offline=True)

    assert attempts == [] and modelscope_server.requests == []
    assert offline.resolved.source.listed_by.startswith("offline: the listing saved")
    assert offline.resolved.weight_files.files == online.resolved.weight_files.files
    assert offline.weights.missing == ()


def test_hf_hub_offline_makes_modelscope_loads_offline_too(tiny_ms_repo, modelscope_server, monkeypatch):
    modelport.load("org/tiny", hub="modelscope")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with modelscope_server.forbid_connections() as attempts:
        loaded = modelport.load("org/tiny", hub="modelscope")
    assert attempts == [] and loaded.resolved.source.offline is True


def test_an_offline_miss_names_every_file_that_is_not_cached(tiny_ms_repo, modelscope_server):
    resolved = modelport.resolve("org/tiny", hub="modelscope")  # the config only
    with modelscope_server.forbid_connections() as attempts, pytest.raises(OfflineMissError) as info:
        modelport.load("org/tiny", hub="modelscope", offline=True)
    assert attempts == []
    assert set(info.value.missing) == {"model.safetensors", *resolved.tokenizer.files}
    assert "model.safetensors" in str(info.value)

    source = ModelScopeSource.from_options("org/tiny", LoadOptions(offline=True))
    with modelscope_server.forbid_connections() as attempts, pytest.raises(OfflineMissError) as info:
        source.fetch_many(["config.json", "model.safetensors", "tokenizer.json"])
    assert attempts == [] and info.value.missing == ["model.safetensors", "tokenizer.json"]
    assert "revision master" in str(info.value) and "no network call was made" in str(info.value)


def test_offline_with_nothing_cached_says_the_revision_was_never_fetched(modelscope_server):
    with modelscope_server.forbid_connections() as attempts, pytest.raises(OfflineMissError) as info:
        modelport.resolve("org/tiny", hub="modelscope", offline=True, revision="v2")
    assert attempts == []
    assert "revision 'v2' was never fetched" in str(info.value)


def test_an_unreachable_server_falls_back_to_the_saved_listing_and_cached_files(tiny_ms_repo, modelscope_server):
    modelport.load("org/tiny", hub="modelscope")
    modelscope_server.stop()

    loaded = modelport.load("org/tiny", hub="modelscope")

    assert loaded.resolved.source.listed_by.startswith("ModelScope could not be reached")
    assert loaded.weights.missing == ()


def test_an_unreachable_server_with_nothing_cached_is_a_download_error(modelscope_server):
    url = modelscope_server.url
    modelscope_server.stop()
    with pytest.raises(DownloadError) as info:
        modelport.resolve("org/tiny", hub="modelscope")
    assert f"{url} could not be reached" in str(info.value)


def _legacy_folder(tmp_path: Path, source: Path, *, revision: str | None) -> Path:
    """What modelscope <= 1.37 left: {cache}/models/{owner}/{name, dots as ___} with .mdl/.msc pickles and .mv."""
    folder = _cache(tmp_path) / "models" / "org" / "tiny___v1"
    shutil.copytree(source, folder)
    # Pickles that would fail the test if anything unpickled them.
    bomb = pickle.dumps(Exception).replace(b"Exception", b"Exceptiox")
    (folder / ".mdl").write_bytes(bomb)
    (folder / ".msc").write_bytes(bomb)
    if revision is not None:
        (folder / ".mv").write_text(f"Revision:{revision},CreatedAt:1700000000")
    return folder


def test_an_older_clients_folder_with_dots_as_triple_underscores_is_used(modelscope_server, tiny_model, tmp_path):
    folder = _legacy_folder(tmp_path, tiny_model(), revision="master")

    with modelscope_server.forbid_connections() as attempts:
        loaded = modelport.load("org/tiny.v1", hub="modelscope", offline=True)

    assert attempts == []
    source = loaded.resolved.source
    assert (source.layout, source.folder) == ("legacy", folder)
    assert source.listed_by.startswith("offline: the files in the cached folder")
    assert ".mdl" not in source.list_files() and ".mv" not in source.list_files()
    assert loaded.weights.missing == ()


def test_an_older_clients_folder_holding_another_revision_is_not_used(modelscope_server, tiny_model, tmp_path):
    _legacy_folder(tmp_path, tiny_model(), revision="v0")
    with pytest.raises(OfflineMissError, match="revision 'v1' was never fetched"):
        modelport.resolve("org/tiny.v1", hub="modelscope", offline=True, revision="v1")


def test_online_an_older_clients_folder_saves_the_downloads_it_already_has(modelscope_server, tiny_model, tmp_path):
    model = tiny_model()
    modelscope_server.add_repo("org/tiny.v1", model)
    _legacy_folder(tmp_path, model, revision="master")

    loaded = modelport.load("org/tiny.v1", hub="modelscope")

    assert loaded.resolved.source.layout == "legacy"
    assert modelscope_server.count(kind="file") == 0
    assert modelscope_server.count(kind="files") == 1


def test_a_modelscope_downloaded_folder_is_a_local_path(tiny_ms_repo, tmp_path, modelscope_server):
    downloaded = modelport.load("org/tiny", hub="modelscope").resolved.source.folder
    folder = tmp_path / "copied" / "tiny___v1"
    shutil.copytree(downloaded, folder)
    for name in (".mdl", ".msc"):
        (folder / name).write_bytes(b"\x80\x04not a pickle anyone reads")
    (folder / ".mv").write_text("Revision:master,CreatedAt:1700000000")
    shutil.copy(tiny_ms_repo.folder / "configuration.json", folder / "configuration.json")
    modelscope_server.clear_requests()

    loaded = modelport.load(str(folder), hub="modelscope")

    assert loaded.resolved.source.kind == "local"
    assert modelscope_server.requests == []
    assert "configuration.json" in loaded.resolved.source.list_files()
    assert not {".mdl", ".msc", ".mv"} & set(loaded.resolved.source.list_files())
    assert loaded.weights.missing == () and loaded.resolved.hf_config.model_type == "llama"


def test_the_older_layouts_names_and_revision_files_are_read_as_modelscope_wrote_them(tmp_path):
    from modelport_modelscope.source import escaped_name, folder_revision, legacy_folders

    assert escaped_name("Qwen2.5-0.5B-Instruct") == "Qwen2___5-0___5B-Instruct"
    cache = tmp_path / "c"
    assert legacy_folders(cache, "Qwen/Qwen2.5-0.5B")[:2] == [
        cache / "models" / "Qwen" / "Qwen2___5-0___5B",
        cache / "hub" / "models" / "Qwen" / "Qwen2___5-0___5B",
    ]
    folder = tmp_path / "m"
    folder.mkdir()
    assert folder_revision(folder) is None
    (folder / ".mv").write_text("Revision:v1.0.2,CreatedAt:1712345678")
    assert folder_revision(folder) == "v1.0.2"
    (folder / ".mv").write_text("master\n")
    assert folder_revision(folder) == "master"
