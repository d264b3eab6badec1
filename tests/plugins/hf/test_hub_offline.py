"""Offline, modelport-hf makes no network call at all.

In each test the local Hub is stopped and any connection to its port fails the test.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest

import modelport
from modelport.errors import OfflineMissError

# huggingface_hub reads HF_HUB_OFFLINE once, when first imported: import it before any test sets the
# variable, so that setting it for one test does not leave the library offline for the rest of the session.
pytest.importorskip("huggingface_hub")


@contextmanager
def no_network(server):
    """The server is stopped, and any attempt to connect to its port fails the test."""
    server.stop()
    server.clear_requests()
    with server.forbid_connections() as attempts:
        yield
    assert attempts == []
    assert server.requests == []


def test_a_cached_model_loads_offline_without_a_network_call(tiny_repo, hub_server):
    online = modelport.load("org/tiny")
    with no_network(hub_server):
        offline = modelport.load("org/tiny", offline=True)
    assert offline.resolved.source.revision == online.resolved.source.revision
    assert sorted(offline.model.weights) == sorted(online.model.weights)
    assert offline.tokenizer("Hello")["input_ids"] == online.tokenizer("Hello")["input_ids"]
    assert "offline" in offline.trace.find("source")[0].reason


def test_hf_hub_offline_in_the_environment_is_offline(tiny_repo, hub_server, monkeypatch):
    modelport.load("org/tiny")
    with no_network(hub_server):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert modelport.load("org/tiny").model.weights


def test_an_offline_miss_names_the_files_that_are_not_cached(tiny_repo, hub_server):
    modelport.resolve("org/tiny")  # caches the pin, the listing and config.json; no weights, no tokenizer
    with no_network(hub_server):
        resolved = modelport.resolve("org/tiny", offline=True)
        assert resolved.weight_files.files == ("model.safetensors",)
        with pytest.raises(OfflineMissError) as info:
            modelport.load("org/tiny", offline=True)
        with pytest.raises(OfflineMissError) as tokenizer:
            resolved.tokenizer.source.fetch_many(resolved.tokenizer.files)
    assert info.value.missing == [*resolved.tokenizer.files, "model.safetensors"]
    assert tokenizer.value.missing == list(resolved.tokenizer.files)
    assert "no network call was made" in str(tokenizer.value)


def test_offline_with_nothing_cached_says_the_revision_was_never_fetched(tiny_repo, hub_server):
    with no_network(hub_server), pytest.raises(OfflineMissError, match="revision 'main' was never fetched"):
        modelport.resolve("org/tiny", offline=True)


def test_offline_a_commit_that_is_not_cached_is_a_miss(tiny_repo, hub_server):
    commit = tiny_repo.resolve("main").sha
    with no_network(hub_server), pytest.raises(OfflineMissError, match="nothing of commit"):
        modelport.resolve("org/tiny", offline=True, revision=commit)


def test_offline_a_branch_uses_the_commit_the_cache_recorded(tiny_repo, hub_server, tiny_model):
    first = modelport.resolve("org/tiny").source.revision
    tiny_repo.commit(tiny_model("other", hidden_size=32))
    with no_network(hub_server):
        resolved = modelport.resolve("org/tiny", offline=True)
    assert resolved.source.revision == first
    assert resolved.hf_config.hidden_size == 64


def test_without_a_cached_listing_missing_files_are_reported_as_not_cached(tiny_repo, hub_server, tmp_path):
    from huggingface_hub import hf_hub_download

    # A cache filled file by file with hf_hub_download records no listing of the commit.
    hf_hub_download("org/tiny", "config.json", cache_dir=tmp_path / "hf_home" / "hub", endpoint=hub_server.url)
    assert not (tmp_path / "hf_home" / "hub" / "models--org--tiny" / "trees").exists()
    with no_network(hub_server):
        source = modelport.resolve("org/tiny", offline=True, skip_tokenizer_init=True, load_format="dummy").source
        assert source.list_files() == ["config.json"]
        assert "cached files only" in source.location
        with pytest.raises(OfflineMissError) as info:
            source.fetch("tokenizer.json")
    assert info.value.missing == ["tokenizer.json"]
    assert "unknown" in str(info.value)
