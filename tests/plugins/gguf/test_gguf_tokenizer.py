"""Tokenizers built from GGUF metadata reproduce llama.cpp's own test vectors, and the kit's tokenizer."""

from __future__ import annotations

import pytest

import modelport
from modelport.errors import TokenizerError
from modelport_gguf.header import read_header
from modelport_gguf.tokenizer import PRE_TOKENIZERS, build_tokenizer

SEPARATOR = "\n__ggml_vocab_test__\n"


def vectors(path):
    """llama.cpp's test-tokenizer-0 vectors: texts in ``.inp``, one line of expected ids each in ``.out``."""
    texts = path.with_suffix(".gguf.inp").read_text(encoding="utf-8").split(SEPARATOR)[:-1]
    lines = path.with_suffix(".gguf.out").read_text(encoding="utf-8").split("\n")[: len(texts)]
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, lines, strict=True)]


CORPUS_FILES = [
    "ggml-vocab-bert-bge.gguf",
    "ggml-vocab-deepseek-llm.gguf",
    "ggml-vocab-falcon.gguf",
    "ggml-vocab-gpt-2.gguf",
    "ggml-vocab-llama-spm.gguf",
    "ggml-vocab-mpt.gguf",
    "ggml-vocab-refact.gguf",
    "ggml-vocab-starcoder.gguf",
]


def test_every_corpus_file_is_covered_here(corpus):
    assert sorted(p.name for p in corpus.glob("*.gguf")) == CORPUS_FILES


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_every_llama_cpp_vector_of_the_corpus_is_reproduced(corpus, name):
    """As llama.cpp's test-tokenizer-0 tokenizes: no special tokens added, none parsed from the text."""
    tokenizer = build_tokenizer(read_header(corpus / name))
    cases = vectors(corpus / name)
    assert len(cases) == 46
    wrong = [
        (text, got, want) for text, want in cases if (got := tokenizer.encode(text, add_special_tokens=False)) != want
    ]
    assert wrong == []


def test_special_tokens_and_the_post_processor_come_from_the_metadata(corpus):
    spm = build_tokenizer(read_header(corpus / "ggml-vocab-llama-spm.gguf"))
    assert (spm.bos_token, spm.eos_token, spm.unk_token) == ("<s>", "</s>", "<unk>")
    assert spm.encode("Hello world") == [1, *spm.encode("Hello world", add_special_tokens=False)]
    assert spm.decode(spm.encode("Hello world  again"), skip_special_tokens=True) == "Hello world  again"
    bert = build_tokenizer(read_header(corpus / "ggml-vocab-bert-bge.gguf"))
    ids = bert.encode("Hello world")
    assert (ids[0], ids[-1]) == (101, 102) and bert.pad_token == "[PAD]" and bert.mask_token == "[MASK]"
    gpt2 = build_tokenizer(read_header(corpus / "ggml-vocab-gpt-2.gguf"))
    assert gpt2.decode(gpt2.encode(" Hello\n\tworld  ")) == " Hello\n\tworld  "


def test_every_pre_tokenizer_expression_compiles():
    from tokenizers import Regex

    for name, (expressions, _) in PRE_TOKENIZERS.items():
        for expression in expressions:
            Regex(expression)  # raises on an expression Oniguruma rejects
        assert expressions, name


def test_the_kit_tokenizer_round_trips_through_gguf(kit_gguf):
    from transformers import AutoTokenizer

    path = kit_gguf("Q8_0")
    original = AutoTokenizer.from_pretrained(path.parent / f"{path.stem}-hf")
    loaded = modelport.load(str(path), dtype="float32")
    tokenizer = loaded.tokenizer
    assert loaded.resolved.tokenizer.mode == "gguf"
    for text in ["The quick brown fox", "Hello world! 12345 #@%", "  spaces\n\nand lines", "unseen: ñ 漢字"]:
        assert tokenizer.encode(text, add_special_tokens=False) == original.encode(text, add_special_tokens=False)
        assert tokenizer.decode(tokenizer.encode(text)) == text
    messages = [{"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == original.apply_chat_template(
        messages, tokenize=False
    )
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)


def test_text_prompts_generate_through_the_gguf_tokenizer(kit_gguf):
    llm = modelport.LLM(str(kit_gguf("F32")), dtype="float32")
    params = modelport.SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    by_text = llm.generate(["The quick brown fox"], params)[0]
    ids = llm.get_tokenizer().encode("The quick brown fox")
    by_ids = llm.generate([{"prompt_token_ids": ids}], params)[0]
    assert list(by_text.outputs[0].token_ids) == list(by_ids.outputs[0].token_ids)
    assert by_text.outputs[0].text == llm.get_tokenizer().decode(by_text.outputs[0].token_ids)


def test_an_unsupported_tokenizer_model_is_a_typed_error(tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "t5.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_tokenizer_model("t5")
    writer.add_token_list(["<pad>", "</s>", "<unk>"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    with pytest.raises(TokenizerError, match=r"tokenizer\.ggml\.model='t5' is not supported"):
        build_tokenizer(read_header(path))
