"""The testing kit's local ModelScope answers the real modelscope client in the shapes it expects."""

from __future__ import annotations

import json
import urllib.request

import pytest

import modelport
from modelport.errors import AccessDeniedError
from modelport.testing import ModelScopeServer


def _api(server: ModelScopeServer, token: str = ""):
    from modelscope.hub.api import HubApi

    return HubApi(endpoint=server.url, token=token)


def test_the_client_reads_repository_info_branches_and_tags(modelscope_server):
    repo = modelscope_server.add_repo("org/tiny", {"config.json": "{}"})
    repo.tag("v1")
    repo.branch("dev")

    info = _api(modelscope_server).get_model("org/tiny")
    assert (info["Owner"], info["Name"]) == ("org", "tiny")
    assert _api(modelscope_server).get_model_branches_and_tags("org/tiny") == (["dev", "master"], ["v1"])
    assert {r.kind for r in modelscope_server.requests} >= {"info", "revisions"}


def test_the_listing_envelope_and_file_entries_have_modelscopes_fields(modelscope_server):
    modelscope_server.add_repo("org/tiny", {"config.json": "{}", "sub/model.safetensors": b"\0" * 8})
    url = f"{modelscope_server.url}/api/v1/models/org/tiny/repo/files?Revision=master&Recursive=True"
    with urllib.request.urlopen(url) as answer:
        body = json.load(answer)
    assert (body["Code"], body["Success"]) == (200, True)
    entries = {e["Path"]: e for e in body["Data"]["Files"]}
    assert entries["sub"]["Type"] == "tree"
    weights = entries["sub/model.safetensors"]
    assert (weights["Type"], weights["Size"], weights["IsLFS"], len(weights["Sha256"])) == ("blob", 8, True, 64)


def test_a_private_repository_answers_401_without_a_token_and_403_with_another(modelscope_server):
    modelscope_server.add_repo("org/private", {"config.json": "{}"}, private=True, tokens=["granted"])
    with pytest.raises(AccessDeniedError):
        modelport.resolve("org/private", hub="modelscope")
    with pytest.raises(AccessDeniedError):
        modelport.resolve("org/private", hub="modelscope", token="someone-else")
    assert [r.status for r in modelscope_server.requests if r.kind == "files"] == [401, 403]


def test_an_injected_listing_error_is_retried_by_the_client(tiny_ms_repo, modelscope_server):
    modelscope_server.fail(None, kind="files", status=503)
    resolved = modelport.resolve("org/tiny", hub="modelscope")
    assert resolved.source.kind == "modelscope"
    assert [r.status for r in modelscope_server.requests if r.kind == "files"] == [503, 200]


def test_an_injected_download_error_is_retried_and_the_file_arrives_whole(tiny_ms_repo, modelscope_server):
    modelscope_server.fail("config.json", status=500)
    resolved = modelport.resolve("org/tiny", hub="modelscope")
    assert resolved.hf_config.model_type == "llama"
    assert modelscope_server.count(filename="config.json", status=500) == 1
    assert modelscope_server.downloads("config.json") == 1
    cached = resolved.source.folder / "config.json"
    assert cached.read_bytes() == (tiny_ms_repo.folder / "config.json").read_bytes()


def test_a_range_request_gets_the_tail_of_a_file(modelscope_server):
    modelscope_server.add_repo("org/tiny", {"a.txt": "0123456789"})
    request = urllib.request.Request(
        f"{modelscope_server.url}/api/v1/models/org/tiny/repo?Revision=master&FilePath=a.txt",
        headers={"Range": "bytes=4-"},
    )
    with urllib.request.urlopen(request) as answer:
        assert (answer.status, answer.read(), answer.headers["Content-Range"]) == (206, b"456789", "bytes 4-9/10")
    assert modelscope_server.requests[-1].range == "bytes=4-"
