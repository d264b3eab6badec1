"""The ``mistral`` tokenizer mode: mistral-common's choice of file, and its encode, decode and chat encoding."""

from __future__ import annotations

import json

import pytest
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistral_common.tokens.tokenizers.utils import get_one_valid_tokenizer_file

import modelport
from modelport.errors import TokenizerError
from modelport.testing.mistral_files import write_sentencepiece, write_tekken

TEXTS = ["Hello world", "It was the best of times, it was the worst of times.", "Numbers 12345 & symbols #@%", ""]
CONVERSATIONS = [
    [{"role": "user", "content": "Hello there"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the age of wisdom?"},
        {"role": "assistant", "content": "It was the best of times."},
        {"role": "user", "content": "And the worst?"},
    ],
]


def _reference(folder, file):
    return MistralTokenizer.from_file(str(folder / file))


@pytest.mark.parametrize(
    ("kind", "version", "file"),
    [
        ("tekken", "v3", "tekken.json"),
        ("tekken", "v7", "tekken.json"),
        ("tekken", "v11", "tekken.json"),
        ("tekken", "v13", "tekken.json"),
        ("sentencepiece", "v3", "tokenizer.model.v3"),
    ],
)
def test_encode_decode_and_chat_equal_mistral_commons_own(mistral_model, kind, version, file):
    _, folder = mistral_model(tokenizer=kind, tokenizer_version=version)
    loaded = modelport.load(str(folder), load_format="dummy")
    tokenizer = loaded.tokenizer
    assert loaded.resolved.tokenizer.mode == "mistral" and loaded.resolved.tokenizer.files == (file,)
    reference = _reference(folder, file)
    raw = reference.instruct_tokenizer.tokenizer
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == raw.encode(text, bos=True, eos=False)
        assert tokenizer.encode(text, add_special_tokens=False) == raw.encode(text, bos=False, eos=False)
        assert tokenizer.decode(ids) == reference.decode(ids) == text
        assert tokenizer.decode(ids, skip_special_tokens=False) == reference.decode(ids, SpecialTokenPolicy.KEEP)
    for messages in CONVERSATIONS:
        expected = reference.encode_chat_completion(ChatCompletionRequest(messages=messages))
        assert tokenizer.apply_chat_template(messages) == expected.tokens
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        assert text == reference.decode(expected.tokens, SpecialTokenPolicy.KEEP)
        assert "[INST]" in text
    assert tokenizer.eos_token_id == raw.eos_id and tokenizer.bos_token_id == raw.bos_id
    assert len(tokenizer) == raw.n_words
    assert tokenizer.all_special_ids == sorted(raw.special_ids)


def test_the_tokenizer_keeps_modelports_tokenizer_protocol(mistral_model):
    check_tokenizer = pytest.importorskip("modelport.testing").__dict__.get("check_tokenizer")
    if check_tokenizer is None:
        pytest.skip("this modelport's testing kit has no check_tokenizer")
    for kind in ("tekken", "sentencepiece"):
        _, folder = mistral_model(kind, tokenizer=kind)
        tokenizer = modelport.load(str(folder), load_format="dummy").tokenizer
        assert check_tokenizer(tokenizer, "It was the best of times", chat=True) == tokenizer.encode(
            "It was the best of times"
        )


@pytest.mark.parametrize(
    "files",
    [
        ["tekken.json", "tokenizer.model.v3"],
        ["tokenizer.model.v1", "tokenizer.model.v3"],
        ["tokenizer.model.v3", "tokenizer.model.v7"],
        ["tokenizer.model"],
        ["tokenizer.model.v3m1", "tokenizer.model.v3"],
    ],
)
def test_the_tokenizer_file_is_chosen_as_mistral_common_chooses(mistral_model, files):
    _, folder = mistral_model(tokenizer=None)
    for name in files:
        if name == "tekken.json":
            write_tekken(folder / name)
        else:
            write_sentencepiece(folder / name)
    resolved = modelport.resolve(str(folder), load_format="dummy")
    assert resolved.tokenizer.files == (get_one_valid_tokenizer_file(sorted(files)),)
    assert "chosen as mistral-common chooses" in resolved.trace.find("tokenizer")[0].reason


def test_auto_keeps_the_hf_tokenizer_for_hf_folders_and_mistral_mode_can_be_forced(mistral_model):
    _hf, folder = mistral_model(same_folder=True, tokenizer="sentencepiece", weights=None)
    # params.json alone: the folder is a Hugging Face one, and so is its tokenizer.
    resolved = modelport.resolve(str(folder), load_format="dummy")
    assert resolved.config_format == "hf" and resolved.tokenizer.mode == "hf"
    forced = modelport.resolve(str(folder), load_format="dummy", tokenizer_mode="mistral")
    assert forced.tokenizer.mode == "mistral" and forced.tokenizer.files == ("tokenizer.model.v3",)
    assert forced.trace.find("tokenizer")[0].reason.startswith("tokenizer_mode='mistral'")


def test_hf_mode_on_a_mistral_folder_with_both_tokenizers_reads_the_hf_files(mistral_model):
    _, folder = mistral_model(same_folder=True)
    resolved = modelport.resolve(str(folder), tokenizer_mode="hf")
    assert resolved.config_format == "mistral"
    assert resolved.tokenizer.mode == "hf" and "tokenizer.json" in resolved.tokenizer.files


def test_mistral_mode_without_a_mistral_common_file_names_the_folder(tiny_model):
    folder = tiny_model()
    with pytest.raises(TokenizerError) as caught:
        modelport.resolve(str(folder), tokenizer_mode="mistral")
    assert str(folder) in str(caught.value) and "tekken.json" in str(caught.value)


def test_a_broken_tekken_file_is_a_tokenizer_error_naming_it(mistral_model):
    _, folder = mistral_model()
    (folder / "tekken.json").write_text('{"config": {"version": "v99"}, "vocab": []}')
    with pytest.raises(TokenizerError) as caught:
        modelport.load(str(folder), load_format="dummy")
    assert "tekken.json" in str(caught.value) and "v99" in str(caught.value)


def test_a_conversation_mistral_common_rejects_is_a_tokenizer_error(mistral_model):
    _, folder = mistral_model()
    tokenizer = modelport.load(str(folder), load_format="dummy").tokenizer
    with pytest.raises(TokenizerError) as caught:
        tokenizer.apply_chat_template([{"role": "assistant", "content": "first"}, {"role": "system", "content": "x"}])
    assert "mistral-common cannot encode this conversation" in str(caught.value)


def test_llm_chat_and_generate_go_through_mistral_common(mistral_model):
    _, folder = mistral_model()
    llm = modelport.LLM(str(folder), dtype="float32", max_num_seqs=4, kv_cache_memory=1 << 22)
    reference = _reference(folder, "tekken.json")
    params = modelport.SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    outputs = llm.chat(CONVERSATIONS[1], params)
    expected = reference.encode_chat_completion(ChatCompletionRequest(messages=CONVERSATIONS[1])).tokens
    assert outputs[0].prompt_token_ids == expected
    generated = outputs[0].outputs[0]
    assert len(generated.token_ids) == 4
    assert generated.text == reference.decode(generated.token_ids)
    [plain] = llm.generate("Hello world", params)
    assert plain.prompt_token_ids == reference.instruct_tokenizer.tokenizer.encode("Hello world", bos=True, eos=False)


def test_a_tekken_file_over_the_json_size_cap_is_a_tokenizer_error_before_it_is_parsed(mistral_model, monkeypatch):
    from modelport.config_checks import MAX_JSON_BYTES_ENV

    _, folder = mistral_model()
    size = (folder / "tekken.json").stat().st_size
    monkeypatch.setenv(MAX_JSON_BYTES_ENV, str(size - 1))
    with pytest.raises(TokenizerError) as caught:
        modelport.load(str(folder))
    assert str(folder / "tekken.json") in str(caught.value) and MAX_JSON_BYTES_ENV in str(caught.value)
    monkeypatch.setenv(MAX_JSON_BYTES_ENV, str(size))
    assert modelport.load(str(folder)).tokenizer is not None


def test_a_model_larger_than_its_tekken_vocabulary_generates_and_drops_the_ids_the_tokenizer_lacks(mistral_model):
    """params.json's vocab_size 4096 over a tekken.json of 500 tokens: sampled ids past 500 decode to nothing."""
    _, folder = mistral_model(sizes={"num_hidden_layers": 1, "vocab_size": 4096})
    llm = modelport.LLM(str(folder), dtype="float32")
    tokenizer = llm.get_tokenizer()
    assert tokenizer.vocab_size < 4096
    params = modelport.SamplingParams(temperature=1.0, seed=1, max_tokens=20, ignore_eos=True)
    output = llm.generate(["hello"], params)[0].outputs[0]
    assert max(output.token_ids) >= tokenizer.vocab_size  # the case at hand was sampled
    known = [t for t in output.token_ids if t < tokenizer.vocab_size]
    assert output.text == tokenizer.decode(known)
    assert tokenizer.decode([*tokenizer.encode("hi", add_special_tokens=False), 10**6, -1, 2**40]) == "hi"


@pytest.mark.parametrize(
    ("change", "value"), [("pattern", "x*"), ("default_vocab_size", 50)], ids=["empty-matching-pattern", "small-vocab"]
)
def test_a_tekken_file_on_which_tiktoken_panics_is_a_tokenizer_error_naming_it(mistral_model, change, value):
    """Such a file loads; tiktoken's Rust core then panics while encoding (pyo3's PanicException, a BaseException)."""
    _, folder = mistral_model()
    tekken = json.loads((folder / "tekken.json").read_text())
    tekken["config"][change] = value
    (folder / "tekken.json").write_text(json.dumps(tekken))
    tokenizer = modelport.load(str(folder), load_format="dummy").tokenizer
    with pytest.raises(TokenizerError, match="panicked in tiktoken") as caught:
        tokenizer.encode("a" * 40 + "!")
    assert "tekken.json" in str(caught.value)
    with pytest.raises(TokenizerError, match="panicked in tiktoken"):
        tokenizer.apply_chat_template([{"role": "user", "content": "a" * 40 + "!"}])
