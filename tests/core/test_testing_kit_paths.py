"""The testing kit's file writers take a path as a string as well as a ``Path``, and return a ``Path``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_make_tiny_model_and_make_tokenizer_take_a_string(tmp_path):
    from modelport.testing import make_tiny_model
    from modelport.testing.models import make_tokenizer

    folder = make_tiny_model(str(tmp_path / "tiny"), weights=None)
    assert folder == tmp_path / "tiny" and isinstance(folder, Path)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    tokenizer = make_tokenizer(str(tmp_path / "tok"))
    assert (tmp_path / "tok" / "tokenizer.json").is_file() and tokenizer.convert_ids_to_tokens(1) == "<s>"


def test_make_plugin_distribution_takes_a_string(tmp_path):
    from modelport.testing.distributions import make_plugin_distribution

    distribution = make_plugin_distribution(str(tmp_path / "site"), "kit-paths", "VALUE = 1")
    assert (tmp_path / "site" / "kit_paths.py").read_text() == "VALUE = 1"
    assert distribution.name == "kit-paths"


def test_gguf_writers_take_strings(tmp_path):
    pytest.importorskip("gguf", reason="the gguf package is not installed (modelport-gguf's dependency)")
    from modelport.testing.gguf_files import make_tiny_gguf, write_gguf

    path = make_tiny_gguf(str(tmp_path / "m.gguf"), "F32")
    assert path == tmp_path / "m.gguf" and path.read_bytes()[:4] == b"GGUF"
    again = write_gguf(str(tmp_path / "m-hf"), str(tmp_path / "n.gguf"), "Q8_0")
    assert again == tmp_path / "n.gguf" and again.read_bytes()[:4] == b"GGUF"


def test_mistral_writers_take_strings(tmp_path):
    pytest.importorskip("sentencepiece", reason="sentencepiece is not installed (modelport-mistral's dependency)")
    from modelport.testing import make_tiny_model
    from modelport.testing.mistral_files import make_mistral_folder, write_sentencepiece, write_tekken

    tekken = write_tekken(str(tmp_path / "tekken.json"))
    assert tekken == tmp_path / "tekken.json" and "vocab" in json.loads(tekken.read_text())
    model = write_sentencepiece(str(tmp_path / "tokenizer.model.v3"))
    assert model == tmp_path / "tokenizer.model.v3" and model.stat().st_size > 0
    hf = make_tiny_model(tmp_path / "hf")
    folder = make_mistral_folder(str(hf), str(tmp_path / "mistral"))
    assert folder == tmp_path / "mistral" and (folder / "params.json").is_file()
