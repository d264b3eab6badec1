"""The tokenizer modelport-hf loads caches what engines ask often and otherwise is the plain tokenizer."""

from __future__ import annotations

import copy
import pickle

import pytest

import modelport
from modelport_hf.tokenizer import CachedTokenizer, cached_tokenizer

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "<s>special tokens inside</s> the text",
    "Numbers like 12345, symbols #@% and unicode: naïve café 東京",
    "",
]
MESSAGES = [{"role": "user", "content": "Hello world"}, {"role": "assistant", "content": "Hi there"}]


@pytest.fixture
def model_folder(tiny_model):
    return tiny_model(weights=None)


@pytest.fixture
def plain(model_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_folder)


@pytest.fixture
def loaded(model_folder):
    return modelport.load(str(model_folder), load_format="dummy").tokenizer


def test_load_returns_a_cached_tokenizer_of_the_plain_class(loaded, plain):
    assert isinstance(loaded, CachedTokenizer)
    assert isinstance(loaded, type(plain))
    assert type(loaded).__name__ == type(plain).__name__
    assert repr(loaded) == repr(plain)


def test_cached_values_equal_the_plain_tokenizers(loaded, plain):
    assert loaded.all_special_ids == plain.all_special_ids
    assert loaded.all_special_tokens == plain.all_special_tokens
    assert loaded.get_vocab() == plain.get_vocab()
    assert len(loaded) == len(plain)
    assert loaded.max_token_id == max(max(plain.get_vocab().values()), plain.vocab_size - 1)


def test_cached_values_are_computed_once(loaded, plain, monkeypatch):
    calls = []
    original = type(plain).get_vocab
    monkeypatch.setattr(type(plain), "get_vocab", lambda self: calls.append(1) or original(self))
    assert plain.get_vocab() and calls == [1]
    calls.clear()
    first = loaded.get_vocab()
    assert [loaded.get_vocab() is first, len(loaded), loaded.all_special_ids] == [True, len(first), [1, 2, 0]]
    assert calls == []


def test_encode_and_decode_equal_the_plain_tokenizers(loaded, plain):
    for text in TEXTS:
        ids = plain(text)["input_ids"]
        assert loaded(text)["input_ids"] == ids
        assert loaded.encode(text) == plain.encode(text)
        assert loaded.decode(ids) == plain.decode(ids)
        assert loaded.decode(ids, skip_special_tokens=True) == plain.decode(ids, skip_special_tokens=True)
        assert loaded.convert_ids_to_tokens(ids) == plain.convert_ids_to_tokens(ids)
    assert loaded(TEXTS, padding=False)["input_ids"] == plain(TEXTS, padding=False)["input_ids"]
    assert loaded.decode(loaded.encode("Hello world", add_special_tokens=False)) == "Hello world"


def test_chat_template_works_through_the_cache(loaded, plain):
    text = loaded.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == plain.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == "<s>user\nHello world</s>\n<s>assistant\nHi there</s>\n<s>assistant\n"
    ids = loaded.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]
    assert ids == plain.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]


def test_pickles_and_copies_as_a_cached_tokenizer(loaded, plain):
    pickle.dumps(plain)  # the plain one pickles, so the cached one must
    for clone in (pickle.loads(pickle.dumps(loaded)), copy.deepcopy(loaded), copy.copy(loaded)):
        assert isinstance(clone, CachedTokenizer) and isinstance(clone, type(plain))
        assert clone.get_vocab() == plain.get_vocab() and len(clone) == len(plain)
        assert clone.encode(TEXTS[1]) == plain.encode(TEXTS[1])


def test_save_pretrained_writes_what_the_plain_tokenizer_writes(loaded, plain, tmp_path):
    loaded.save_pretrained(tmp_path / "cached")
    plain.save_pretrained(tmp_path / "plain")
    written = sorted(p.name for p in (tmp_path / "plain").iterdir())
    assert sorted(p.name for p in (tmp_path / "cached").iterdir()) == written
    for name in written:
        assert (tmp_path / "cached" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name


def test_adding_tokens_refreshes_the_cached_values(loaded, model_folder):
    from transformers import AutoTokenizer

    fresh = AutoTokenizer.from_pretrained(model_folder)
    for tokenizer in (loaded, fresh):
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
        tokenizer.add_tokens(["<extra>"])
        tokenizer.eos_token = "<s>"
    assert loaded.all_special_tokens == fresh.all_special_tokens == ["<s>", "<unk>", "<pad>"]
    assert loaded.all_special_ids == fresh.all_special_ids
    assert loaded.get_vocab() == fresh.get_vocab()
    assert len(loaded) == len(fresh) == 386
    assert loaded.max_token_id == 385


def test_wrapping_twice_changes_nothing(loaded, plain):
    assert cached_tokenizer(loaded) is loaded
    wrapped = cached_tokenizer(plain)
    assert type(wrapped) is type(loaded)
    assert not isinstance(plain, CachedTokenizer)
