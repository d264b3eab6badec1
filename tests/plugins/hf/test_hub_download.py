"""modelport-hf on Hub ids, served by the testing kit's local Hub to the real huggingface_hub client."""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path

import pytest

import modelport
from modelport.errors import (
    AccessDeniedError,
    DownloadError,
    ModelportError,
    ReferenceNotFoundError,
)
from modelport.options import LoadOptions
from modelport_hf.hub import HubSource, looks_like_repo_id

SECRET = "hf_secretTOKENvalue123"


@pytest.fixture
def tiny_repo(hub_server, tiny_model):
    """``org/tiny`` on the local Hub: a tiny llama (config, tokenizer, safetensors)."""
    folder = tiny_model()
    repo = hub_server.add_repo("org/tiny", folder)
    repo.folder = folder
    return repo


def _cache(tmp_path: Path) -> Path:
    return tmp_path / "hf_home" / "hub" / "models--org--tiny"


def _resolve_requests(server):
    return [(r.method, r.filename) for r in server.requests if r.kind == "resolve"]


def test_repo_ids_are_recognised_and_paths_and_file_names_are_not():
    for ref in ("gpt2", "org/name", "Org-1/name_2.5", "a/b.c"):
        assert looks_like_repo_id(ref), ref
    for ref in ("org/repo:Q4_K_M", "a/b/c", "org//name", "-org/name", "org/na--me", "org/..", "m.gguf", "x.git"):
        assert not looks_like_repo_id(ref), ref


def test_an_existing_folder_shaped_like_a_repo_id_is_used_as_it_is(hub_server, tiny_model, tmp_path, monkeypatch):
    tiny_model("org/tiny")
    monkeypatch.chdir(tmp_path)
    resolved = modelport.resolve("org/tiny")
    assert resolved.source.kind == "local"
    assert hub_server.requests == []


def test_load_downloads_the_model_from_the_hub(tiny_repo, hub_server):
    from safetensors.torch import load_file

    loaded = modelport.load("org/tiny")
    source = loaded.resolved.source
    assert isinstance(source, HubSource)
    assert source.revision == tiny_repo.resolve("main").sha
    assert source.location == f"hf:org/tiny@{source.revision}"
    expected = load_file(tiny_repo.folder / "model.safetensors")
    assert sorted(loaded.model.weights) == sorted(expected)
    assert all(loaded.model.weights[k].equal(v) for k, v in expected.items())
    assert loaded.tokenizer.decode(loaded.tokenizer("Hello world")["input_ids"]) == "Hello world"
    step = loaded.trace.find("source")[0]
    assert step.plugin == "modelport-hf" and "'main' is commit" in step.reason
    # Small files first: config, then the tokenizer, then the weights.
    gets = [r.filename for r in hub_server.requests if r.kind == "resolve" and r.method == "GET"]
    assert gets == ["config.json", *loaded.resolved.tokenizer.files, "model.safetensors"]


def test_a_repo_id_without_an_organisation_works_too(hub_server, tiny_model):
    hub_server.add_repo("tiny-llama", tiny_model())
    resolved = modelport.resolve("tiny-llama")
    assert resolved.source.location.startswith("hf:tiny-llama@")
    assert resolved.hf_config.hidden_size == 64


def test_resolve_downloads_config_only_and_no_weights(tiny_repo, hub_server):
    resolved = modelport.resolve("org/tiny")
    assert resolved.weight_files.files == ("model.safetensors",)
    assert _resolve_requests(hub_server) == [("HEAD", "config.json"), ("GET", "config.json")]
    assert hub_server.count(kind="info") == 1


def test_a_cached_model_loads_again_with_one_pin_request_and_no_download(tiny_repo, hub_server, tmp_path):
    modelport.load("org/tiny")
    hub_server.clear_requests()
    modelport.load("org/tiny")
    assert [(r.kind, r.revision) for r in hub_server.requests] == [("info", "main")]
    hub_server.clear_requests()
    modelport.load("org/tiny", revision=tiny_repo.resolve("main").sha)
    assert hub_server.requests == []


def test_a_branch_is_pinned_once_so_every_file_comes_from_one_commit(tiny_repo, hub_server, tiny_model):
    first = tiny_repo.resolve("main").sha
    resolved = modelport.resolve("org/tiny")
    other = tiny_model("other", hidden_size=32, seed=1)
    second = tiny_repo.commit(other)  # main moves while this resolve is in progress
    weights = resolved.source.fetch("model.safetensors")
    assert weights.read_bytes() == (tiny_repo.folder / "model.safetensors").read_bytes()
    assert resolved.source.revision == first != second
    assert {r.revision for r in hub_server.requests if r.kind == "resolve"} == {first}
    assert modelport.resolve("org/tiny").hf_config.hidden_size == 32


def test_a_tag_or_a_commit_selects_that_snapshot(tiny_repo, hub_server, tiny_model):
    first = tiny_repo.tag("v1.0")
    tiny_repo.commit(tiny_model("other", hidden_size=32))
    assert modelport.resolve("org/tiny", revision="v1.0").source.revision == first
    assert modelport.resolve("org/tiny", revision="v1.0").hf_config.hidden_size == 64
    assert modelport.resolve("org/tiny", revision=first).hf_config.hidden_size == 64
    assert modelport.resolve("org/tiny").hf_config.hidden_size == 32


def test_a_missing_repo_is_a_reference_error_that_mentions_tokens(hub_server):
    with pytest.raises(ReferenceNotFoundError) as info:
        modelport.resolve("org/nothing")
    assert "org/nothing" in str(info.value) and "HF_TOKEN" in str(info.value)


def test_an_unreachable_hub_falls_back_on_the_cached_commit(tiny_repo, hub_server):
    first = modelport.load("org/tiny")
    hub_server.stop()
    again = modelport.load("org/tiny")
    assert again.resolved.source.revision == first.resolved.source.revision
    assert "could not be reached" in again.trace.find("source")[0].reason


def test_an_unreachable_hub_with_nothing_cached_is_a_download_error(tiny_repo, hub_server):
    hub_server.stop()
    with pytest.raises(DownloadError, match="could not be reached"):
        modelport.resolve("org/tiny")


def test_a_missing_revision_is_a_reference_error_naming_it(tiny_repo):
    with pytest.raises(ReferenceNotFoundError, match="no revision 'v9'"):
        modelport.resolve("org/tiny", revision="v9")


def test_a_missing_file_is_a_reference_error_naming_it_without_asking_the_hub(tiny_repo, hub_server):
    source = modelport.resolve("org/tiny").source
    hub_server.clear_requests()
    assert not source.exists("preprocessor_config.json")
    with pytest.raises(ReferenceNotFoundError, match=r"preprocessor_config\.json"):
        source.fetch("preprocessor_config.json")
    assert hub_server.requests == []


def test_revisions_and_file_names_never_reach_outside_the_cache(tiny_repo, hub_server):
    from modelport.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="revision"):
        modelport.resolve("org/tiny", revision="../../elsewhere")
    source = modelport.resolve("org/tiny").source
    for path in ("../refs/main", "/etc/hostname", "a//b"):
        with pytest.raises(ReferenceNotFoundError):
            source.fetch(path)


def test_gated_repo_without_a_token_is_access_denied(hub_server, tiny_model):
    hub_server.add_repo("org/gated", tiny_model(), gated=True, tokens=[SECRET])
    with pytest.raises(AccessDeniedError) as info:
        modelport.resolve("org/gated")
    assert "gated" in str(info.value) and "no token was given" in str(info.value)


def test_gated_repo_with_a_token_not_granted_is_access_denied(hub_server, tiny_model):
    hub_server.add_repo("org/gated", tiny_model(), gated=True, tokens=["hf_someone_else"])
    with pytest.raises(AccessDeniedError) as info:
        modelport.resolve("org/gated", token=SECRET)
    assert "does not grant access" in str(info.value)
    assert SECRET not in "".join(traceback.format_exception(info.value))


def test_gated_repo_with_a_granted_token_loads(hub_server, tiny_model):
    hub_server.add_repo("org/gated", tiny_model(), gated=True, tokens=[SECRET])
    loaded = modelport.load("org/gated", token=SECRET)
    assert loaded.model.weights
    assert all(r.authorized for r in hub_server.requests)


def test_the_token_comes_from_hf_token_when_not_given(hub_server, tiny_model, monkeypatch):
    hub_server.add_repo("org/private", tiny_model(), private=True, tokens=[SECRET])
    with pytest.raises(ReferenceNotFoundError, match="private"):
        modelport.resolve("org/private")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert modelport.resolve("org/private").hf_config.hidden_size == 64


def test_the_token_never_appears_in_errors_traces_repr_or_logs(hub_server, tiny_model, caplog):
    caplog.set_level(logging.DEBUG)
    hub_server.add_repo("org/gated", tiny_model(), gated=True, tokens=[SECRET])
    loaded = modelport.load("org/gated", token=SECRET)
    shown = [
        repr(loaded.resolved.source),
        json.dumps(loaded.resolved.to_dict(), default=str),
        loaded.trace.format(),
        repr(loaded.resolved.options),
        caplog.text,
    ]
    hub_server.add_repo("org/locked", tiny_model("other"), gated=True, tokens=["hf_other"])
    with pytest.raises(ModelportError) as info:
        modelport.resolve("org/locked", token=SECRET)
    shown.append("".join(traceback.format_exception(info.value)))
    assert not [text for text in shown if SECRET in text]


def test_a_server_error_during_a_transfer_is_a_download_error_and_the_next_load_works(tiny_repo, hub_server):
    hub_server.fail("model.safetensors", status=500, method="GET")
    with pytest.raises(DownloadError) as info:
        modelport.load("org/tiny")
    assert info.value.file == "model.safetensors" and "HTTP 500" in str(info.value)
    assert modelport.load("org/tiny").model.weights


def test_transient_server_errors_on_metadata_are_retried(tiny_repo, hub_server):
    hub_server.fail("config.json", status=503, times=1, method="HEAD")
    assert modelport.resolve("org/tiny").hf_config.hidden_size == 64


def test_only_the_shards_named_by_the_index_are_fetched(hub_server, tiny_model):
    folder = tiny_model(max_shard_size="40KB")
    (folder / "consolidated.safetensors").write_bytes(b"never fetched")
    (folder / "pytorch_model.bin").write_bytes(b"never fetched")
    hub_server.add_repo("org/sharded", folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    resolved = modelport.resolve("org/sharded")
    assert resolved.weight_files.files == tuple(shards)
    assert [f for f in hub_server.requests if f.method == "GET" and f.kind == "resolve"][-1].filename == (
        "model.safetensors.index.json"
    )
    assert not any(hub_server.downloads(s) for s in shards)
    loaded = modelport.load("org/sharded")
    assert sorted(loaded.model.weights) == sorted(index["weight_map"])
    assert all(hub_server.downloads(s) == 1 for s in shards)
    assert hub_server.count(filename="consolidated.safetensors") == 0
    assert hub_server.count(filename="pytorch_model.bin") == 0


def test_bin_weights_are_fetched_only_without_safetensors(hub_server, tiny_model):
    hub_server.add_repo("org/bin", tiny_model(weights="bin"))
    loaded = modelport.load("org/bin")
    assert loaded.resolved.weight_files.files == ("pytorch_model.bin",)
    assert hub_server.downloads("pytorch_model.bin") == 1


def test_dummy_load_format_fetches_no_weights(tiny_repo, hub_server):
    loaded = modelport.load("org/tiny", load_format="dummy", skip_tokenizer_init=True)
    assert loaded.model.weights == {}
    assert _resolve_requests(hub_server) == [("HEAD", "config.json"), ("GET", "config.json")]


def test_download_dir_keeps_files_outside_the_cache(tiny_repo, hub_server, tmp_path):
    target = tmp_path / "downloads"
    loaded = modelport.load("org/tiny", download_dir=str(target))
    source = loaded.resolved.source
    assert source.snapshot_dir == target.resolve() / "models--org--tiny" / "snapshots" / source.revision
    assert (source.snapshot_dir / "model.safetensors").is_file()
    assert (target / ".locks" / "models--org--tiny").is_dir()
    assert not (tmp_path / "hf_home" / "hub").exists()


def test_hf_config_path_and_tokenizer_can_come_from_other_repos(hub_server, tiny_model):
    hub_server.add_repo("org/weights", tiny_model("weights"))
    hub_server.add_repo("org/config", tiny_model("config", hidden_size=64, weights=None, tokenizer=False))
    hub_server.add_repo("org/tokenizer", tiny_model("tok", weights=None))
    resolved = modelport.resolve("org/weights", hf_config_path="org/config", tokenizer="org/tokenizer")
    assert resolved.config_source.location.startswith("hf:org/config@")
    assert resolved.tokenizer.source.location.startswith("hf:org/tokenizer@")
    assert resolved.source.location.startswith("hf:org/weights@")
    assert hub_server.count(repo_id="org/config", filename="config.json", method="GET") == 1
    assert hub_server.count(repo_id="org/weights", filename="config.json") == 0


def test_a_separate_tokenizer_repo_ignores_the_models_revision(hub_server, tiny_model):
    weights = hub_server.add_repo("org/weights", tiny_model("weights"))
    hub_server.add_repo("org/tokenizer", tiny_model("tok", weights=None))
    pinned = weights.resolve("main").sha  # a commit of org/weights: org/tokenizer has no such revision
    resolved = modelport.resolve("org/weights", revision=pinned, tokenizer="org/tokenizer")
    assert resolved.source.revision == pinned
    assert resolved.tokenizer.source.requested_revision == "main"


def test_tokenizer_revision_takes_the_tokenizer_from_its_own_commit(tiny_repo, hub_server):
    from modelport.testing import make_tokenizer

    first = tiny_repo.resolve("main").sha
    tok_dir = Path(f"{tiny_repo.folder}-tok")
    smaller = len(make_tokenizer(tok_dir, vocab_size=300))
    second = tiny_repo.commit({p.name: p.read_bytes() for p in tok_dir.iterdir()}, keep_existing=True)
    resolved = modelport.resolve("org/tiny", revision=second, tokenizer_revision=first)
    assert resolved.source.revision == second
    assert resolved.tokenizer.source.revision == first
    loaded = modelport.load("org/tiny", revision=second, tokenizer_revision=first, load_format="dummy")
    assert len(loaded.tokenizer) == 384
    assert len(modelport.load("org/tiny", revision=second, load_format="dummy").tokenizer) == smaller != 384


def test_code_revision_pins_remote_code_to_its_own_commit(tiny_repo, hub_server, tiny_model):
    code = tiny_repo.commit({"modeling_tiny.py": "X = 1\n"}, keep_existing=True, message="code")
    tiny_repo.tag("code-v1", code)
    tiny_repo.commit(tiny_model("other", hidden_size=32))
    source = HubSource.from_options("org/tiny", LoadOptions(code_revision="code-v1"))
    code_source = source.code_source()
    assert code_source.revision == code != source.revision
    assert code_source.fetch("modeling_tiny.py").read_text() == "X = 1\n"
    assert not source.exists("modeling_tiny.py")
    assert HubSource.from_options("org/tiny", LoadOptions()).code_source().revision == source.revision


REMOTE_CONFIG = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from transformers import PretrainedConfig

class MarkerConfig(PretrainedConfig):
    model_type = "marker-model"
"""


def test_remote_code_from_a_hub_repo_runs_with_trust_remote_code(hub_server, tmp_path):
    import os
    import subprocess
    import sys

    marker = tmp_path / "marker.txt"
    config = {
        "model_type": "marker-model",
        "architectures": ["MarkerForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_marker.MarkerConfig"},
    }
    files = {"config.json": json.dumps(config), "configuration_marker.py": REMOTE_CONFIG.format(marker=str(marker))}
    hub_server.add_repo("org/remote", files)
    code = (
        "import modelport\n"
        "modelport.resolve('org/remote', load_format='dummy', skip_tokenizer_init=True, trust_remote_code=True)\n"
    )
    # In a child process: transformers caches dynamic modules under HF_HOME, set by the fixture to a tmp folder.
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), timeout=120
    )
    assert marker.exists(), proc.stderr[-2000:]
    assert "MarkerForCausalLM" in proc.stderr  # the architecture error comes after the config was built


def test_the_lock_lives_in_the_cache_next_to_the_blobs(tiny_repo, hub_server, tmp_path):
    modelport.load("org/tiny")
    locks = tmp_path / "hf_home" / "hub" / ".locks" / "models--org--tiny"
    blobs = {p.name for p in (_cache(tmp_path) / "blobs").iterdir()}
    assert {p.name.removesuffix(".lock") for p in locks.glob("*.lock")} <= blobs
    assert locks.is_dir()


def test_the_source_describes_where_and_how_without_the_token(tiny_repo, hub_server, tmp_path):
    source = modelport.resolve("org/tiny", token=SECRET).source
    described = source.describe()
    assert described["kind"] == "hf" and described["repo_id"] == "org/tiny"
    assert described["requested_revision"] == "main" and described["revision"] == source.revision
    assert described["endpoint"] == hub_server.url
    assert described["cache_dir"] == str((tmp_path / "hf_home" / "hub").resolve())
    assert SECRET not in json.dumps(described) + repr(source)
