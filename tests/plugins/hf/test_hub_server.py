"""The testing kit's local Hub, exercised with the real huggingface_hub client (no modelport in between)."""

from __future__ import annotations

import hashlib

import pytest

huggingface_hub = pytest.importorskip("huggingface_hub")

from huggingface_hub import HfApi, hf_hub_download  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from modelport.testing.hub_server import HubServer, git_blob_sha1  # noqa: E402

FILES = {"config.json": '{"model_type": "llama"}', "model.safetensors": b"\x01" * 50_000, "sub/notes.txt": "hi"}


@pytest.fixture
def server():
    with HubServer() as srv:
        srv.add_repo("org/tiny", FILES)
        yield srv


def _download(server, tmp_path, filename, **kwargs):
    return hf_hub_download(
        kwargs.pop("repo_id", "org/tiny"), filename, cache_dir=tmp_path / "cache", endpoint=server.url, **kwargs
    )


def test_resolve_endpoint_sends_the_headers_the_client_needs(server):
    import httpx2

    commit = server.repo("org/tiny").resolve("main").sha
    head = httpx2.head(f"{server.url}/org/tiny/resolve/main/config.json")
    assert head.status_code == 200
    assert head.headers["X-Repo-Commit"] == commit
    assert head.headers["ETag"] == f'"{git_blob_sha1(FILES["config.json"].encode())}"'
    assert head.headers["Content-Length"] == str(len(FILES["config.json"]))
    lfs = httpx2.head(f"{server.url}/org/tiny/resolve/main/model.safetensors")
    sha256 = hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    assert lfs.headers["X-Linked-Etag"] == f'"{sha256}"' and lfs.headers["X-Linked-Size"] == "50000"
    ranged = httpx2.get(f"{server.url}/org/tiny/resolve/{commit}/model.safetensors", headers={"Range": "bytes=100-"})
    assert ranged.status_code == 206
    assert ranged.headers["Content-Range"] == "bytes 100-49999/50000"
    assert ranged.content == FILES["model.safetensors"][100:]


def test_the_client_downloads_into_its_cache_layout(server, tmp_path):
    path = _download(server, tmp_path, "sub/notes.txt")
    commit = server.repo("org/tiny").resolve("main").sha
    assert path.endswith(f"models--org--tiny/snapshots/{commit}/sub/notes.txt")
    assert open(path).read() == "hi"
    assert (tmp_path / "cache" / "models--org--tiny" / "refs" / "main").read_text() == commit
    assert server.count(kind="resolve", method="HEAD", filename="sub/notes.txt") == 1
    assert server.downloads("sub/notes.txt") == 1


def test_branches_tags_and_commits_each_resolve_to_their_snapshot(server, tmp_path):
    repo = server.repo("org/tiny")
    first = repo.tag("v1")
    second = repo.commit({"config.json": '{"model_type": "qwen2"}'}, keep_existing=True)
    repo.branch("dev", first)
    assert first != second and len(second) == 40
    api = HfApi(endpoint=server.url)
    assert api.model_info("org/tiny").sha == second
    assert api.model_info("org/tiny", revision="v1").sha == first
    assert api.model_info("org/tiny", revision="dev").sha == first
    assert "qwen2" in open(_download(server, tmp_path, "config.json")).read()
    assert "llama" in open(_download(server, tmp_path, "config.json", revision="v1")).read()
    assert "llama" in open(_download(server, tmp_path, "config.json", revision=first)).read()


def test_model_info_and_tree_endpoints_list_every_file(server):
    api = HfApi(endpoint=server.url)
    info = api.model_info("org/tiny", files_metadata=True)
    assert sorted(s.rfilename for s in info.siblings) == sorted(FILES)
    weights = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    assert weights.size == 50_000 and weights.lfs.sha256 == hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    recursive = {f.path: type(f).__name__ for f in api.list_repo_tree("org/tiny", recursive=True)}
    assert recursive == {
        "config.json": "RepoFile",
        "model.safetensors": "RepoFile",
        "sub": "RepoFolder",
        "sub/notes.txt": "RepoFile",
    }
    top = {f.path for f in api.list_repo_tree("org/tiny")}
    assert top == {"config.json", "model.safetensors", "sub"}
    assert {f.path for f in api.list_repo_tree("org/tiny", path_in_repo="sub")} == {"sub/notes.txt"}


def test_missing_repo_revision_and_file_raise_the_clients_typed_errors(server, tmp_path):
    with pytest.raises(RepositoryNotFoundError):
        _download(server, tmp_path, "config.json", repo_id="org/nothing")
    with pytest.raises(RevisionNotFoundError):
        HfApi(endpoint=server.url).model_info("org/tiny", revision="v404")
    with pytest.raises(RemoteEntryNotFoundError):
        _download(server, tmp_path, "absent.json")


def test_gated_repo_answers_401_without_a_token_403_with_a_wrong_one_and_serves_a_granted_one(server, tmp_path):
    server.add_repo("org/gated", FILES, gated=True, tokens=["hf_granted"])
    with pytest.raises(GatedRepoError) as no_token:
        _download(server, tmp_path, "config.json", repo_id="org/gated", token=False)
    assert no_token.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as wrong:
        _download(server, tmp_path, "config.json", repo_id="org/gated", token="hf_other")
    assert wrong.value.response.status_code == 403
    assert open(_download(server, tmp_path, "config.json", repo_id="org/gated", token="hf_granted")).read()
    assert HfApi(endpoint=server.url).model_info("org/gated", token=False).gated == "manual"


def test_private_repo_is_not_found_without_a_granted_token(server, tmp_path):
    server.add_repo("org/private", FILES, private=True, tokens=["hf_granted"])
    api = HfApi(endpoint=server.url)
    for token in (False, "hf_other"):
        with pytest.raises(RepositoryNotFoundError):
            api.model_info("org/private", token=token)
    assert api.model_info("org/private", token="hf_granted").private is True


def test_injected_server_errors_are_retried_by_the_client(server, tmp_path):
    server.fail("config.json", status=503, times=2, method="HEAD")
    assert open(_download(server, tmp_path, "config.json")).read() == FILES["config.json"]
    statuses = [r.status for r in server.requests if r.filename == "config.json" and r.method == "HEAD"]
    assert statuses == [503, 503, 200]


def test_a_server_error_on_the_transfer_is_not_retried(server, tmp_path):
    server.fail("model.safetensors", status=500, method="GET")
    with pytest.raises(HfHubHTTPError) as info:
        _download(server, tmp_path, "model.safetensors")
    assert info.value.response.status_code == 500


def test_a_cut_transfer_is_resumed_with_a_range_request(server, tmp_path, monkeypatch):
    # huggingface_hub writes what it received in DOWNLOAD_CHUNK_SIZE pieces (10 MiB); with small
    # pieces, a cut in the middle of this small file leaves some bytes written to resume from.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    server.cut("model.safetensors", after=20_000)
    path = _download(server, tmp_path, "model.safetensors")
    assert open(path, "rb").read() == FILES["model.safetensors"]
    gets = [r for r in server.requests if r.filename == "model.safetensors" and r.method == "GET"]
    assert [(g.status, g.bytes_sent) for g in gets] == [(200, 20_000), (206, 50_000 - 16_384)]
    assert gets[1].range == "bytes=16384-"


def test_requests_are_recorded_without_the_token(server, tmp_path):
    server.add_repo("org/gated", FILES, gated=True, tokens=["hf_granted"])
    _download(server, tmp_path, "config.json", repo_id="org/gated", token="hf_granted")
    assert all(r.authorized for r in server.requests)
    assert "hf_granted" not in repr(server.requests)


def test_a_stopped_server_refuses_connections_and_forbid_connections_catches_attempts(server, tmp_path):
    import httpx2

    server.stop()
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"{server.url}/api/models/org/tiny")
    with server.forbid_connections() as attempts:
        with pytest.raises(AssertionError, match="local Hub"):
            httpx2.get(f"{server.url}/api/models/org/tiny")
    assert attempts == [("127.0.0.1", server.port)]
    server.start()
    assert httpx2.get(f"{server.url}/api/models/org/tiny").json()["id"] == "org/tiny"
