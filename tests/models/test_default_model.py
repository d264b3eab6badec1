"""The embedded default model: shipped, small, and writing English."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import modelport

pytest.importorskip("modelport_hf", reason="the default model is a Hugging Face folder")

DEFAULT = Path(modelport.__file__).parent / "data" / "default-model"
COMMON = set(
    "the and i to of a you my is that not me it in be your with he his have for this thou sir what will so but "
    "all shall as do no by him we are our thee good man lord am was her she if now come thy let o here there "
    "would well on or at they more then how know".split()
)


def test_it_ships_small_with_weights_and_tokenizer():
    files = {p.name: p.stat().st_size for p in DEFAULT.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert sum(files.values()) < 10 * 1024 * 1024


def test_it_writes_recognisable_english():
    llm = modelport.LLM(str(DEFAULT))
    assert llm.loaded.resolved.architecture.impl == "native"
    text = llm.generate("ROMEO:\n", modelport.SamplingParams(temperature=0, max_tokens=60))[0].outputs[0].text
    words = [w.lower() for w in re.findall(r"[A-Za-z']+", text)]
    common = [w for w in words if w in COMMON]
    # A model with random weights writes byte soup: few words, almost none of them common.
    assert len(words) >= 20, text
    assert len(common) / len(words) >= 0.3, text
