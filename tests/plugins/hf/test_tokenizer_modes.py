"""tokenizer_mode with modelport-hf: auto and hf give the fast tokenizer, slow the Python one or a clear error."""

from __future__ import annotations

import io
import json

import pytest

import modelport
from modelport.errors import RemoteCodeRequiredError, TokenizerError
from modelport.testing.models import _TRAINING_TEXT
from modelport_hf.tokenizer import CachedTokenizer


@pytest.mark.parametrize("mode", ["auto", "hf"])
def test_auto_and_hf_give_the_fast_tokenizer(tiny_model, mode):
    loaded = modelport.load(str(tiny_model(weights=None)), load_format="dummy", tokenizer_mode=mode)
    assert loaded.resolved.tokenizer.mode == "hf"
    assert loaded.tokenizer.is_fast
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("Hello world")) == "Hello world"


def test_slow_without_a_slow_tokenizer_says_so_and_lists_the_modes(tiny_model):
    folder = tiny_model(weights=None)
    with pytest.raises(TokenizerError) as info:
        modelport.load(str(folder), load_format="dummy", tokenizer_mode="slow")
    message = str(info.value)
    assert str(folder) in message
    assert "tokenizer_mode='slow'" in message and "has none" in message
    assert "'auto', 'hf', 'slow'" in message


def _sentencepiece_model(folder):
    """A SentencePiece tokenizer.model trained on the kit's text, the way Llama 2 ships its tokenizer."""
    spm = pytest.importorskip("sentencepiece")
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_TRAINING_TEXT.splitlines() * 20),
        model_writer=buffer,
        vocab_size=120,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(buffer.getvalue())
    return folder


def test_slow_builds_the_python_tokenizer_from_tokenizer_model(tiny_model):
    from transformers import PreTrainedTokenizer

    folder = _sentencepiece_model(tiny_model(weights=None, tokenizer=False, vocab_size=120))
    loaded = modelport.load(str(folder), load_format="dummy", tokenizer_mode="slow")
    tokenizer = loaded.tokenizer
    assert loaded.resolved.tokenizer.mode == "slow"
    assert loaded.resolved.tokenizer.files == ("tokenizer.model",)
    assert isinstance(tokenizer, PreTrainedTokenizer) and isinstance(tokenizer, CachedTokenizer)
    assert not tokenizer.is_fast
    assert len(tokenizer) == 120 and tokenizer.max_token_id == 119
    assert tokenizer.decode(tokenizer.encode("Hello world", add_special_tokens=False)) == "Hello world"


def test_unreadable_tokenizer_files_are_a_tokenizer_error_naming_the_model(tiny_model):
    folder = tiny_model(weights=None)
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError) as info:
        modelport.load(str(folder), load_format="dummy")
    assert str(folder) in str(info.value) and "tokenizer.json" in str(info.value)


def test_tokenizer_code_from_the_repository_never_runs_without_trust_remote_code(tiny_model, tmp_path):
    folder = tiny_model(weights=None)
    marker = tmp_path / "marker.txt"
    (folder / "tokenization_marker.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n\n"
        "class MarkerTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(
        tokenizer_class="MarkerTokenizer", auto_map={"AutoTokenizer": [None, "tokenization_marker.MarkerTokenizer"]}
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(RemoteCodeRequiredError) as info:
        modelport.load(str(folder), load_format="dummy")
    assert "tokenization_marker.MarkerTokenizer" in str(info.value) and "trust_remote_code=True" in str(info.value)
    assert not marker.exists()
