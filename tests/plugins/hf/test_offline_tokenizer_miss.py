"""Offline, a repository whose tokenizer files were never downloaded (issue 11, point 7).

The cache holds the config and the weights (fetched file by file, so no listing of the commit): offline,
resolve and ``modelport inspect`` say which tokenizer files are missing from the cache, not "no plugin
found a tokenizer".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import modelport
from modelport.errors import OfflineMissError

pytest.importorskip("huggingface_hub")


@pytest.fixture
def config_and_weights_cached(tiny_repo, hub_server, tmp_path):
    from huggingface_hub import hf_hub_download

    cache = tmp_path / "hf_home" / "hub"
    for name in ("config.json", "model.safetensors"):
        hf_hub_download("org/tiny", name, cache_dir=cache, endpoint=hub_server.url)
    assert not (cache / "models--org--tiny" / "trees").exists()
    hub_server.stop()
    return cache


def test_offline_resolve_names_the_tokenizer_files_missing_from_the_cache(config_and_weights_cached):
    with pytest.raises(OfflineMissError) as info:
        modelport.resolve("org/tiny", offline=True)
    assert info.value.missing == ["tokenizer.json", "tokenizer_config.json"]
    assert "not fully cached" in str(info.value) and "skip_tokenizer_init" in str(info.value)
    # Without a tokenizer the same cache resolves and loads.
    loaded = modelport.load("org/tiny", offline=True, skip_tokenizer_init=True)
    assert loaded.weights.loaded


def test_offline_inspect_says_which_files_are_missing(config_and_weights_cached, tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "MODELPORT_PLUGINS": "modelport-hf"}
    proc = subprocess.run(
        [sys.executable, "-m", "modelport", "inspect", "org/tiny"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert proc.returncode != 0
    assert "tokenizer.json, tokenizer_config.json" in proc.stderr and "no plugin found" not in proc.stderr
    assert json.dumps("org/tiny")[1:-1] in proc.stderr
