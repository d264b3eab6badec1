"""Transfers from the local Hub: interrupted and resumed, two processes at once, progress bars."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import modelport
from modelport.errors import DownloadError

huggingface_hub = pytest.importorskip("huggingface_hub")

HERE = Path(__file__).resolve().parent


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _repo_cache(tmp_path: Path) -> Path:
    return tmp_path / "hf_home" / "hub" / "models--org--tiny"


def test_a_transfer_cut_halfway_is_resumed_with_a_range_request(tiny_repo, hub_server, monkeypatch):
    from safetensors.torch import load_file

    # huggingface_hub writes what it receives in DOWNLOAD_CHUNK_SIZE pieces (10 MiB): with small pieces
    # the bytes received before the cut are kept, and the download resumes from there.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    size = (tiny_repo.folder / "model.safetensors").stat().st_size
    hub_server.cut("model.safetensors", after=size // 2)
    loaded = modelport.load("org/tiny")
    gets = [r for r in hub_server.requests if r.filename == "model.safetensors" and r.method == "GET"]
    assert [g.status for g in gets] == [200, 206]
    assert gets[0].bytes_sent == size // 2
    resumed_at = (size // 2) // 4096 * 4096
    assert gets[1].range == f"bytes={resumed_at}-" and gets[1].bytes_sent == size - resumed_at
    expected = load_file(tiny_repo.folder / "model.safetensors")
    assert all(loaded.model.weights[k].equal(v) for k, v in expected.items())


def test_an_interrupted_download_fails_typed_leaves_nothing_partial_and_the_next_load_completes(
    tiny_repo, hub_server, tmp_path
):
    size = (tiny_repo.folder / "model.safetensors").stat().st_size
    hub_server.cut("model.safetensors", after=size // 2)
    hub_server.fail("model.safetensors", status=502, method="GET")  # the client's resume attempt fails too
    with pytest.raises(DownloadError) as info:
        modelport.load("org/tiny")
    assert info.value.file == "model.safetensors" and "HTTP 502" in str(info.value)
    snapshot = _repo_cache(tmp_path) / "snapshots" / tiny_repo.resolve("main").sha
    assert not (snapshot / "model.safetensors").exists()
    blobs = _repo_cache(tmp_path) / "blobs"
    blob = hashlib.sha256((tiny_repo.folder / "model.safetensors").read_bytes()).hexdigest()
    assert not (blobs / blob).exists()
    assert [p.name for p in blobs.iterdir() if p.name.endswith(".incomplete")] == []

    hub_server.clear_requests()
    loaded = modelport.load("org/tiny")
    assert _sha256(loaded.resolved.source.fetch("model.safetensors")) == _sha256(tiny_repo.folder / "model.safetensors")
    # huggingface_hub keeps no partial file across calls: the next load starts the transfer from zero.
    gets = [r for r in hub_server.requests if r.filename == "model.safetensors" and r.method == "GET"]
    assert [(g.status, g.range) for g in gets] == [(200, None)]


LOADER = """
import hashlib, json, sys, time
from pathlib import Path

sys.path.insert(0, {here!r})
import huggingface_hub, safetensors.torch, transformers  # imported before the start signal

import modelport
from modelport import hookimpl
from modelport.plugins import get_host
from modelport.testing import registered_plugin
from modelport.types import ArchitectureChoice


class AnyArchitecture:
    @hookimpl(tryfirst=True)
    def modelport_select_architecture(self, hf_config, model_impl, registry):
        return ArchitectureChoice(hf_config.architectures[0], "native", "hf_test_models:RecordingModel")


host = get_host()
with registered_plugin(AnyArchitecture(), "any-architecture", host=host):
    print("ready", flush=True)
    go = Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.01)
    loaded = modelport.load("org/tiny")
resolved = loaded.resolved
files = ["config.json", *resolved.weight_files.files, *resolved.tokenizer.files]
hashes = {{f: hashlib.sha256(resolved.source.fetch(f).read_bytes()).hexdigest() for f in files}}
print(json.dumps({{"weights": len(loaded.model.weights), "files": hashes}}), flush=True)
"""


def test_two_processes_loading_one_model_at_once_fetch_each_file_once(tiny_repo, hub_server, tmp_path):
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent(LOADER.format(here=str(HERE))))
    go = tmp_path / "go"
    # Stall each transfer halfway so that the other process arrives while it is in flight.
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        hub_server.pause(name, seconds=1.0, times=2)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        go.touch()
        outputs = [proc.communicate(timeout=240) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert results[0] == results[1]
    assert results[0]["weights"] > 0
    for name, digest in results[0]["files"].items():
        assert digest == _sha256(tiny_repo.folder / name), name
        assert hub_server.downloads(name) == 1, name
    # Both asked for config.json's metadata, so both were after it at once; one waited on the lock.
    assert hub_server.count(method="HEAD", filename="config.json") == 2
    assert (tmp_path / "hf_home" / "hub" / ".locks" / "models--org--tiny").is_dir()


FETCH = "from modelport_hf.hub import HubSource; HubSource('org/tiny').fetch('model.safetensors')"


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")}
    env["HF_HUB_CACHE"] = str(cache)
    return env


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_bars_show_on_a_terminal_and_never_otherwise(tiny_repo, hub_server, tmp_path):
    piped = subprocess.run(
        [sys.executable, "-c", FETCH], capture_output=True, text=True, env=_env(tmp_path / "a"), timeout=120
    )
    assert piped.returncode == 0, piped.stderr
    assert "model.safetensors" not in piped.stderr and "%|" not in piped.stderr
    assert hub_server.downloads("model.safetensors") == 1

    import fcntl
    import struct
    import termios

    leader, follower = os.openpty()
    # A terminal of 24 rows and 120 columns (a fresh pty has 0 columns, and tqdm draws nothing in 0 columns).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-c", FETCH],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env=_env(tmp_path / "b"),
    )
    os.close(follower)
    shown = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closes when the child exits
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert proc.wait(timeout=60) == 0, shown.decode(errors="replace")
    assert b"model.safetensors" in shown and b"100%" in shown
    assert hub_server.downloads("model.safetensors") == 2
