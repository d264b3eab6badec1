"""Shared fixtures of modelport-gguf's tests: kit models written to GGUF, and the corpus of real files."""

from __future__ import annotations

from pathlib import Path

import pytest

#: llama.cpp's vocabulary-only GGUF files with their tokenizer test vectors (absent outside the workspace).
CORPUS = Path(__file__).resolve().parents[4] / "shared" / "corpus" / "gguf"


@pytest.fixture(scope="session")
def kit_gguf(tmp_path_factory):
    """``kit_gguf(ggml_type, architecture="llama", **tiny)``: a kit model written to GGUF (cached per session)."""
    from modelport.testing.gguf_files import make_tiny_gguf

    made: dict[tuple, Path] = {}

    def make(ggml_type: str = "F32", architecture: str = "llama", **tiny) -> Path:
        key = (ggml_type, architecture, tuple(sorted(tiny.items())))
        if key not in made:
            folder = tmp_path_factory.mktemp(f"gguf-{architecture}-{ggml_type}")
            made[key] = make_tiny_gguf(folder / f"kit-{architecture}-{ggml_type}.gguf", ggml_type, architecture, **tiny)
        return made[key]

    return make


@pytest.fixture
def corpus() -> Path:
    """The corpus folder; the test skips where the workspace's ../shared is absent."""
    if not CORPUS.is_dir():
        pytest.skip(f"the GGUF corpus is absent ({CORPUS})")
    return CORPUS


@pytest.fixture(scope="module")
def short_template_budget():
    """Chat templates get 1 s (5 s by default) while the module's tests run, so an endless one stops quickly.

    A GGUF file's template renders under modelport-hf's budget (``chat_template.TEMPLATE_SECONDS``).
    """
    from modelport_hf import chat_template

    saved, chat_template.TEMPLATE_SECONDS = chat_template.TEMPLATE_SECONDS, 1.0
    yield
    chat_template.TEMPLATE_SECONDS = saved
