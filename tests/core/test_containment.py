"""Containment: a local folder hands out only files that lie inside it (issue 11, point 1)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from modelport.containment import contained_file, is_plain_relative
from modelport.errors import InvalidConfigError, ModelportError
from modelport.types import LocalSource


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A folder with the files of a model (their contents do not matter to a source)."""
    folder = tmp_path_factory.mktemp("contained") / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (folder / "tokenizer.json").write_text("{}")
    return folder


@pytest.fixture
def model(tiny, tmp_path):
    folder = tmp_path / "inside" / "m"
    shutil.copytree(tiny, folder)
    return folder


def test_a_link_to_a_folder_outside_does_not_expose_its_files(model):
    (model.parent.parent / "etc").mkdir()
    (model.parent.parent / "etc" / "passwd").write_text("root:x:0:0")
    (model / "etc").symlink_to(model.parent.parent / "etc")
    source = LocalSource(model)
    assert not any(f.startswith("etc/") for f in source.list_files())
    assert source.exists("etc/passwd")  # it is there, by name...
    with pytest.raises(InvalidConfigError, match="outside the model folder"):
        source.fetch("etc/passwd")  # ...but never handed out


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../x", "", "a//b", "C:\\x", "..\\x"])
def test_paths_that_climb_out_are_never_files_of_a_local_source(model, path):
    source = LocalSource(model)
    assert not is_plain_relative(path)
    assert not source.exists(path)
    with pytest.raises(ModelportError):
        source.fetch(path)


def test_links_inside_the_folder_and_into_a_hub_cache_snapshot_blobs_stay_allowed(model, tmp_path):
    (model / "alias.json").symlink_to(model / "config.json")
    assert LocalSource(model).fetch("alias.json").read_text() == (model / "config.json").read_text()
    # The Hugging Face cache layout: snapshots/{commit}/file -> ../../blobs/{sha}.
    repo = tmp_path / "hub" / "models--org--name"
    snapshot = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name in os.listdir(model):
        if (model / name).is_file() and not (model / name).is_symlink():
            shutil.copy(model / name, repo / "blobs" / name)
            (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / name)
    source = LocalSource(snapshot)
    assert "model.safetensors" in source.list_files()
    fetched = source.fetch("model.safetensors")
    assert fetched.read_bytes() == (model / "model.safetensors").read_bytes()
    assert fetched.resolve().parent == (repo / "blobs").resolve()


def test_the_file_a_user_names_may_be_a_link(model, tmp_path):
    elsewhere = tmp_path / "real.json"
    elsewhere.write_text("{}")
    (tmp_path / "named.json").symlink_to(elsewhere)
    source = LocalSource(tmp_path, primary_file="named.json")
    assert source.fetch("named.json").read_text() == "{}"


def test_contained_file_names_the_folder_and_the_entry(model):
    with pytest.raises(InvalidConfigError) as info:
        contained_file(model, "../tokenizer.json", str(model))
    assert str(model) in str(info.value) and "'../tokenizer.json'" in str(info.value)
