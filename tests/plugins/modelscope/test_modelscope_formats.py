"""What ModelScope serves goes through the format plugins unchanged: GGUF repositories through modelport-gguf."""

from __future__ import annotations

import pytest

import modelport
from modelport.errors import ReferenceNotFoundError


@pytest.fixture
def with_gguf(monkeypatch):
    """modelport-gguf seen too (the test skips where it or the gguf library is not installed)."""
    pytest.importorskip("modelport_gguf")
    pytest.importorskip("gguf")
    from modelport.plugins import reset_host

    monkeypatch.setenv("MODELPORT_PLUGINS", "modelport-hf,modelport-modelscope,modelport-gguf")
    reset_host()


@pytest.fixture
def gguf_repo(with_gguf, modelscope_server, tmp_path):
    """``org/tiny-GGUF`` on the local ModelScope: the kit's llama as Q8_0 and F32 GGUF files, and a README."""
    from modelport.testing.gguf_files import make_tiny_gguf

    q8 = make_tiny_gguf(tmp_path / "made" / "tiny-Q8_0.gguf", "Q8_0")
    f32 = make_tiny_gguf(tmp_path / "made" / "tiny-F32.gguf", "F32")
    files = {"tiny-Q8_0.gguf": q8.read_bytes(), "tiny-F32.gguf": f32.read_bytes(), "README.md": "# tiny\n"}
    return modelscope_server.add_repo("org/tiny-GGUF", files)


def test_a_quantisation_of_a_modelscope_gguf_repository_downloads_that_file_alone(gguf_repo, modelscope_server):
    loaded = modelport.load("org/tiny-GGUF:q8_0", hub="modelscope", dtype="float32", skip_tokenizer_init=True)

    source = loaded.resolved.source
    assert (source.kind, source.primary_file, loaded.resolved.config_format) == ("modelscope", "tiny-Q8_0.gguf", "gguf")
    assert loaded.weights.missing == ()
    assert sorted(r.filename for r in modelscope_server.requests if r.kind == "file") == ["tiny-Q8_0.gguf"]


def test_a_named_gguf_file_of_a_modelscope_repository_is_read(gguf_repo, modelscope_server):
    resolved = modelport.resolve("org/tiny-GGUF/tiny-F32.gguf", hub="modelscope", skip_tokenizer_init=True)
    assert (resolved.source.kind, resolved.source.primary_file) == ("modelscope", "tiny-F32.gguf")
    with pytest.raises(ReferenceNotFoundError, match=r"no file 'absent\.gguf'"):
        modelport.resolve("org/tiny-GGUF/absent.gguf", hub="modelscope", skip_tokenizer_init=True)
    with pytest.raises(ReferenceNotFoundError, match="Q4_K_M"):
        modelport.resolve("org/tiny-GGUF:Q4_K_M", hub="modelscope", skip_tokenizer_init=True)


def test_gguf_references_follow_the_hub_and_the_hugging_face_hub_sees_none_of_them(gguf_repo, hub_server):
    resolved = modelport.resolve("org/tiny-GGUF:F32", hub="modelscope", skip_tokenizer_init=True)
    assert resolved.source.kind == "modelscope"
    assert hub_server.requests == []


def test_a_mistral_native_repository_on_modelscope_loads_through_modelport_mistral(
    modelscope_server, tiny_model, tmp_path, monkeypatch
):
    pytest.importorskip("modelport_mistral")
    pytest.importorskip("mistral_common")
    from modelport.plugins import reset_host
    from modelport.testing.mistral_files import make_mistral_folder

    monkeypatch.setenv("MODELPORT_PLUGINS", "modelport-hf,modelport-modelscope,modelport-mistral")
    reset_host()
    hf = tiny_model("hf")
    folder = make_mistral_folder(hf, tmp_path / "mistral")
    modelscope_server.add_repo("org/tiny-mistral", folder)

    loaded = modelport.load("org/tiny-mistral", hub="modelscope", dtype="float32")

    assert (loaded.resolved.source.kind, loaded.resolved.config_format) == ("modelscope", "mistral")
    assert loaded.weights.missing == () and loaded.weights.unexpected == ()
    fetched = sorted(r.filename for r in modelscope_server.requests if r.kind == "file")
    assert all(modelscope_server.downloads(name) == 1 for name in fetched)
    assert "params.json" in fetched and not any(name.endswith(".pth") for name in fetched)
