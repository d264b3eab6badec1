"""modelport-modelscope on ModelScope ids, served by the kit's local ModelScope to the real modelscope client."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import modelport
from modelport.errors import AccessDeniedError, ReferenceNotFoundError
from modelport.options import LoadOptions
from modelport_modelscope.source import ModelScopeSource, looks_like_model_id

SECRET = "ms-secretTOKENvalue123"


def _snapshot(tmp_path: Path, repo: str = "org--tiny", revision: str = "master") -> Path:
    return tmp_path / "modelscope_cache" / "models" / repo / "snapshots" / revision


def _file_requests(server) -> list[str]:
    return sorted(r.filename for r in server.requests if r.kind == "file")


def test_model_ids_are_owner_slash_name_and_paths_and_file_names_are_not():
    for ref in ("org/name", "Qwen/Qwen2.5-0.5B-Instruct", "a_b/c-d.e"):
        assert looks_like_model_id(ref), ref
    for ref in ("gpt2", "a/b/c", "org//name", "-org/name", "org/..", "org/m.gguf", "/abs/path", "./org/name"):
        assert not looks_like_model_id(ref), ref


def test_load_downloads_only_the_files_the_load_needs_into_modelscopes_cache_layout(
    tiny_ms_repo, modelscope_server, tmp_path
):
    loaded = modelport.load("org/tiny", hub="modelscope")

    assert loaded.resolved.source.kind == "modelscope"
    assert loaded.resolved.source.location == "modelscope:org/tiny@master"
    assert loaded.weights.missing == () and loaded.weights.unexpected == ()
    assert loaded.tokenizer("hello world")["input_ids"]
    # Each needed file once; the README and ModelScope's configuration.json are never fetched.
    needed = ["config.json", "model.safetensors", *loaded.resolved.tokenizer.files]
    assert _file_requests(modelscope_server) == sorted(needed)
    assert all(modelscope_server.downloads(name) == 1 for name in needed)
    snapshot = _snapshot(tmp_path)
    for name in needed:
        assert (snapshot / name).read_bytes() == (tiny_ms_repo.folder / name).read_bytes()
    assert not (snapshot / "README.md").exists()
    assert modelscope_server.count(kind="files") == 1  # one listing for the whole load
    assert all(not r.authorized for r in modelscope_server.requests)


def test_the_model_from_modelscope_has_the_local_folders_weights_and_tokenizer(tiny_ms_repo):
    import torch

    remote = modelport.load("org/tiny", hub="modelscope")
    local = modelport.load(str(tiny_ms_repo.folder))
    remote_state, local_state = remote.model.state_dict(), local.model.state_dict()
    assert remote_state.keys() == local_state.keys() and len(remote_state) > 3
    assert all(torch.equal(remote_state[k], local_state[k]) for k in local_state)
    text = "To be, or not to be"
    assert remote.tokenizer(text)["input_ids"] == local.tokenizer(text)["input_ids"]


def test_resolve_reads_the_config_and_the_listing_and_downloads_no_weights(tiny_ms_repo, modelscope_server):
    resolved = modelport.resolve("org/tiny", hub="modelscope")
    assert resolved.weight_files.files == ("model.safetensors",)
    assert _file_requests(modelscope_server) == ["config.json"]
    step = next(s for s in resolved.trace.steps if s.step == "source")
    assert "ModelScope model id" in step.reason and "hub option" in step.reason


def test_a_second_load_is_served_from_the_cache_with_no_file_request(tiny_ms_repo, modelscope_server):
    modelport.load("org/tiny", hub="modelscope")
    modelscope_server.clear_requests()

    loaded = modelport.load("org/tiny", hub="modelscope")

    assert loaded.weights.missing == ()
    assert _file_requests(modelscope_server) == []
    assert [r.kind for r in modelscope_server.requests] == ["files"]


def test_a_revision_gives_that_revisions_files_in_its_own_snapshot_folder(tiny_ms_repo, modelscope_server, tmp_path):
    config = json.loads((tiny_ms_repo.folder / "config.json").read_text())
    tiny_ms_repo.tag("v1")
    tiny_ms_repo.commit({"config.json": json.dumps({**config, "max_position_embeddings": 96})}, keep_existing=True)

    pinned = modelport.resolve("org/tiny", hub="modelscope", revision="v1")
    latest = modelport.resolve("org/tiny", hub="modelscope")

    assert pinned.source.revision == "v1" and latest.source.revision == "master"
    assert pinned.hf_config.max_position_embeddings == config["max_position_embeddings"]
    assert latest.hf_config.max_position_embeddings == 96
    assert json.loads((_snapshot(tmp_path, revision="v1") / "config.json").read_text()) == config
    assert {r.revision for r in modelscope_server.requests if r.kind == "file"} == {"v1", "master"}


def test_download_dir_replaces_the_cache_folder(tiny_ms_repo, modelscope_server, tmp_path):
    resolved = modelport.resolve("org/tiny", hub="modelscope", download_dir=str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "models" / "org--tiny" / "snapshots" / "master" / "config.json").is_file()
    assert not (tmp_path / "modelscope_cache" / "models").exists()
    assert resolved.source.describe()["cache_dir"] == str((tmp_path / "mine").resolve())


def test_allow_and_ignore_patterns_select_from_the_listing_and_only_those_files_are_fetched(
    tiny_ms_repo, modelscope_server
):
    source = ModelScopeSource.from_options("org/tiny", LoadOptions())
    assert "README.md" in source.list_files() and "configuration.json" in source.list_files()
    chosen = source.match(["*.json"], ignore_patterns=["configuration.json", "tokenizer*", "generation_config.json"])
    assert chosen == ["config.json"]
    fetched = source.fetch_many(chosen)
    assert fetched["config.json"].read_bytes() == (tiny_ms_repo.folder / "config.json").read_bytes()
    assert _file_requests(modelscope_server) == ["config.json"]


def test_folders_in_the_listing_are_not_files(modelscope_server):
    modelscope_server.add_repo("org/nested", {"config.json": "{}", "sub/deeper/a.txt": "a", "sub/b.txt": "b"})
    source = ModelScopeSource.from_options("org/nested", LoadOptions())
    assert source.list_files() == ["config.json", "sub/b.txt", "sub/deeper/a.txt"]
    assert source.fetch("sub/deeper/a.txt").read_text() == "a"


def test_a_missing_model_is_reference_not_found(modelscope_server):
    with pytest.raises(ReferenceNotFoundError) as info:
        modelport.resolve("org/absent", hub="modelscope")
    assert "'org/absent'" in str(info.value) and modelscope_server.url in str(info.value)


def test_a_missing_revision_names_the_branches_and_tags_there_are(tiny_ms_repo):
    tiny_ms_repo.tag("v1")
    with pytest.raises(ReferenceNotFoundError) as info:
        modelport.resolve("org/tiny", hub="modelscope", revision="v9")
    assert "no revision 'v9'" in str(info.value)
    assert "'master', 'v1'" in str(info.value)


def test_a_missing_file_is_reference_not_found_naming_the_file(tiny_ms_repo, modelscope_server):
    source = ModelScopeSource.from_options("org/tiny", LoadOptions())
    with pytest.raises(ReferenceNotFoundError, match=r"no file 'nope\.json'"):
        source.fetch("nope.json")
    modelscope_server.fail("config.json", status=404)  # listed, but gone from the server
    with pytest.raises(ReferenceNotFoundError, match=r"no file 'config\.json'"):
        source.fetch("config.json")
    assert not (source.folder / "config.json").exists()


def test_a_private_model_needs_a_granted_token_which_never_shows(modelscope_server, tiny_model, monkeypatch):
    modelscope_server.add_repo("org/private", tiny_model(), private=True, tokens=[SECRET])

    with pytest.raises(AccessDeniedError) as info:
        modelport.resolve("org/private", hub="modelscope")
    assert "MODELSCOPE_API_TOKEN" in str(info.value)
    with pytest.raises(AccessDeniedError) as info:
        modelport.resolve("org/private", hub="modelscope", token="ms-wrong-token")
    assert "ms-wrong-token" not in str(info.value)

    resolved = modelport.resolve("org/private", hub="modelscope", token=SECRET)
    assert resolved.hf_config.model_type == "llama"
    shown = resolved.trace.format() + json.dumps(resolved.to_dict()) + repr(resolved.source)
    assert SECRET not in shown and SECRET not in json.dumps(resolved.source.describe())
    assert all(r.authorized for r in modelscope_server.requests if r.repo_id == "org/private" and r.status == 200)

    monkeypatch.setenv("MODELSCOPE_API_TOKEN", SECRET)
    assert modelport.resolve("org/private", hub="modelscope").source.kind == "modelscope"


def test_concurrent_loads_fetch_each_file_once(tiny_ms_repo, modelscope_server):
    modelscope_server.pause("model.safetensors", seconds=0.5)
    results: list[object] = []

    def load() -> None:
        try:
            results.append(modelport.load("org/tiny", hub="modelscope"))
        except Exception as exc:  # collected: a failure in a thread must fail the test
            results.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    assert len(results) == 3 and not [r for r in results if isinstance(r, Exception)], results
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert modelscope_server.downloads(name) == 1, name
    assert not list(Path(results[0].resolved.source.folder).rglob("*.incomplete"))


def test_token_false_sends_no_token_even_with_one_in_the_environment(modelscope_server, monkeypatch):
    modelscope_server.add_repo("org/private", {"config.json": "{}"}, private=True, tokens=[SECRET])
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", SECRET)
    assert ModelScopeSource.from_options("org/private", LoadOptions()).list_files() == ["config.json"]
    with pytest.raises(AccessDeniedError, match="no token was sent"):
        ModelScopeSource.from_options("org/private", LoadOptions(token=False))
    assert [r.authorized for r in modelscope_server.requests if r.kind == "files"] == [True, False]


def test_describe_says_where_the_files_are_and_never_the_token(tiny_ms_repo, tmp_path):
    source = ModelScopeSource.from_options("org/tiny", LoadOptions(token=SECRET))
    described = source.describe()
    assert described["kind"] == "modelscope" and described["revision"] == "master"
    assert described["requested_revision"] is None and described["layout"] == "snapshots"
    assert described["folder"] == str(_snapshot(tmp_path).resolve())
    assert described["endpoint"].startswith("http://127.0.0.1:")
    assert SECRET not in json.dumps(described) + repr(source)


def test_a_revision_that_would_leave_the_cache_is_refused(modelscope_server):
    from modelport.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="revision"):
        ModelScopeSource.from_options("org/tiny", LoadOptions(revision="../../elsewhere"))
    assert modelscope_server.requests == []
