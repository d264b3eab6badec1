"""Hub references: ``org/repo:QUANT`` and ``org/repo/file.gguf`` download only the chosen file(s)."""

from __future__ import annotations

import pytest

import modelport
from modelport.errors import ReferenceNotFoundError


@pytest.fixture
def gguf_repo(hub_server, kit_gguf):
    """``org/model-GGUF`` on the local Hub: Q8_0, Q4_0 split in two parts, a README and a vision projector."""
    from modelport.testing.gguf_files import write_gguf

    single = kit_gguf("Q8_0")
    split_dir = single.parent / "split"
    first = write_gguf(single.parent / f"{single.stem}-hf", split_dir / "model-Q4_0.gguf", "Q4_0", split_max_tensors=11)
    files = {
        "model-Q8_0.gguf": single.read_bytes(),
        "mmproj-model-f16.gguf": single.read_bytes(),
        "README.md": "# GGUF files",
    }
    for part in sorted(split_dir.glob("model-Q4_0-*.gguf")):
        files[f"Q4_0/{part.name}"] = part.read_bytes()
    assert first.name == "model-Q4_0-00001-of-00002.gguf"
    return hub_server.add_repo("org/model-GGUF", files)


def test_a_quantisation_downloads_that_file_only(hub_server, gguf_repo):
    loaded = modelport.load("org/model-GGUF:q8_0", dtype="float32")
    assert loaded.resolved.source.primary_file == "model-Q8_0.gguf"
    assert loaded.resolved.config_format == "gguf" and loaded.tokenizer is not None
    assert (loaded.weights.missing, loaded.weights.unexpected) == ((), ())
    assert hub_server.downloads("model-Q8_0.gguf") == 1
    others = ["mmproj-model-f16.gguf", "README.md", "Q4_0/model-Q4_0-00001-of-00002.gguf"]
    assert [hub_server.downloads(name) for name in others] == [0, 0, 0]
    source_step = next(s for s in loaded.trace.steps if s.step == "source")
    assert source_step.plugin == "modelport-gguf" and "quantisation Q8_0: model-Q8_0.gguf" in source_step.reason


def test_a_split_quantisation_downloads_its_parts_and_loads_as_one(hub_server, gguf_repo):
    loaded = modelport.load("org/model-GGUF:Q4_0", dtype="float32", skip_tokenizer_init=True)
    parts = ("Q4_0/model-Q4_0-00001-of-00002.gguf", "Q4_0/model-Q4_0-00002-of-00002.gguf")
    assert loaded.resolved.weight_files.files == parts
    assert (loaded.weights.missing, loaded.weights.unexpected) == ((), ())
    assert [hub_server.downloads(p) for p in parts] == [1, 1] and hub_server.downloads("model-Q8_0.gguf") == 0


def test_a_named_file_of_a_repository(hub_server, gguf_repo):
    resolved = modelport.resolve("org/model-GGUF/model-Q8_0.gguf", skip_tokenizer_init=True)
    assert resolved.source.primary_file == "model-Q8_0.gguf" and resolved.source.kind == "hf"
    assert resolved.hf_config.hidden_size == 64
    with pytest.raises(ReferenceNotFoundError, match=r"has no file 'absent\.gguf'"):
        modelport.resolve("org/model-GGUF/absent.gguf", skip_tokenizer_init=True)


def test_an_absent_quantisation_lists_those_present(gguf_repo):
    with pytest.raises(ReferenceNotFoundError, match="no GGUF file of quantisation 'Q6_K'; available: Q4_0, Q8_0"):
        modelport.resolve("org/model-GGUF:Q6_K", skip_tokenizer_init=True)
