"""Transfers: a cut download resumes and lands whole, and processes loading at once download each file once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import modelport


def test_a_transfer_cut_midway_is_resumed_and_the_file_lands_whole(tiny_ms_repo, modelscope_server):
    size = (tiny_ms_repo.folder / "model.safetensors").stat().st_size
    modelscope_server.cut("model.safetensors", after=size // 3)

    loaded = modelport.load("org/tiny", hub="modelscope")

    cached = loaded.resolved.source.folder / "model.safetensors"
    assert cached.read_bytes() == (tiny_ms_repo.folder / "model.safetensors").read_bytes()
    gets = [r for r in modelscope_server.requests if r.kind == "file" and r.filename == "model.safetensors"]
    assert [g.bytes_sent for g in gets] == [size // 3, size - size // 3]
    assert gets[1].range == f"bytes={size // 3}-"
    assert not list(cached.parent.rglob("*.incomplete"))


_FETCH = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from modelport.options import LoadOptions
    from modelport_modelscope.source import ModelScopeSource
    import modelscope.hub.file_download

    source = ModelScopeSource.from_options("org/tiny", LoadOptions(hub="modelscope"))
    # Start together: each worker waits until every worker is ready, so the downloads overlap.
    gate = Path(sys.argv[1])
    (gate / sys.argv[2]).touch()
    deadline = time.monotonic() + 60
    while len(list(gate.iterdir())) < int(sys.argv[3]) and time.monotonic() < deadline:
        time.sleep(0.01)
    print(source.fetch("model.safetensors"))
    """
)


def test_processes_fetching_at_once_download_each_file_once(tiny_ms_repo, modelscope_server, tmp_path):
    modelscope_server.pause("model.safetensors", seconds=1.0)
    gate = tmp_path / "gate"
    gate.mkdir()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _FETCH, str(gate), str(i), "3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    outputs = [w.communicate(timeout=120) for w in workers]

    assert [w.returncode for w in workers] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    paths = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(paths) == 1
    assert modelscope_server.downloads("model.safetensors") == 1
    with open(paths.pop(), "rb") as cached:
        assert cached.read() == (tiny_ms_repo.folder / "model.safetensors").read_bytes()
