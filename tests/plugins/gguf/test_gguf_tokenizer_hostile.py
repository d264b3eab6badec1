"""Hostile ``tokenizer.ggml.*`` metadata: each is a TokenizerError naming the file and the key, never a bare error.

The files are written by gguf-py's own ``GGUFWriter``, as llama.cpp's converter
writes them, with one key of the wrong type, length or content.
"""

from __future__ import annotations

import pytest

from modelport.errors import TokenizerError
from modelport_gguf.header import read_header
from modelport_gguf.tokenizer import build_tokenizer

TOKENS = ["<unk>", "<s>", "</s>", "a", "b", "ab", "Ġ", "Ġa"]
BERT_TOKENS = ["[UNK]", "[CLS]", "[SEP]", "▁a", "b", "▁ab", "Ġ", "Ġa"]
MERGES = ["a b", "Ġ a"]


def _write(path, model: str, changes: dict):
    """A GGUF file holding only tokenizer metadata: a valid ``model`` tokenizer, then ``changes`` (key -> value)."""
    from gguf import GGUFValueType, GGUFWriter

    values = {
        "tokenizer.ggml.model": model,
        "tokenizer.ggml.tokens": TOKENS,
        "tokenizer.ggml.token_type": [2, 3, 3, 1, 1, 1, 1, 1],
        "tokenizer.ggml.scores": [0.0, 0.0, 0.0, -1.0, -2.0, -0.5, -3.0, -0.7],
        "tokenizer.ggml.merges": MERGES,
        "tokenizer.ggml.pre": "gpt-2",
        **changes,
    }
    writer = GGUFWriter(path, "llama")
    for key, value in values.items():
        if isinstance(value, bool):
            writer.add_key_value(key, value, GGUFValueType.BOOL)
        elif isinstance(value, int):
            writer.add_key_value(key, value, GGUFValueType.UINT32)
        elif isinstance(value, str):
            writer.add_key_value(key, value, GGUFValueType.STRING)
        else:
            item = value[0]
            sub = GGUFValueType.STRING if isinstance(item, str) else GGUFValueType.INT32
            sub = GGUFValueType.FLOAT32 if isinstance(item, float) else sub
            writer.add_key_value(key, value, GGUFValueType.ARRAY, sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("model", ["gpt2", "llama", "bert"])
def test_the_well_formed_file_builds(tmp_path, model):
    changes = {"tokenizer.ggml.tokens": BERT_TOKENS, "tokenizer.ggml.cls_token_id": 1} if model == "bert" else {}
    tokenizer = build_tokenizer(read_header(_write(tmp_path / "t.gguf", model, changes)))
    assert tokenizer.convert_ids_to_tokens(5) in {"ab", "##ab"}


@pytest.mark.parametrize(
    ("model", "changes", "message"),
    [
        ("gpt2", {"tokenizer.ggml.pre": ["gpt-2", "llama3"]}, "tokenizer.ggml.pre is not a string but list"),
        ("gpt2", {"tokenizer.ggml.merges": [1, 2]}, "tokenizer.ggml.merges, an array of strings"),
        ("gpt2", {"tokenizer.ggml.merges": ["zz qq"]}, "Token `zz` out of vocabulary"),
        ("gpt2", {"tokenizer.ggml.token_type": 5}, "tokenizer.ggml.token_type is not an array of numbers but int 5"),
        ("gpt2", {"tokenizer.ggml.token_type": ["x"] * 8}, "tokenizer.ggml.token_type is not an array of numbers"),
        ("gpt2", {"tokenizer.ggml.token_type": [1, 1]}, "tokenizer.ggml.token_type has 2 entries for 8 tokens"),
        ("llama", {"tokenizer.ggml.scores": ["x"] * 8}, "tokenizer.ggml.scores is not an array of numbers"),
        ("llama", {"tokenizer.ggml.scores": 7}, "tokenizer.ggml.scores is not an array of numbers but int 7"),
        ("llama", {"tokenizer.ggml.scores": [1.0]}, "tokenizer.ggml.scores has 1 entries for 8 tokens"),
        ("bert", {}, "a bert tokenizer needs its unknown token: '[UNK]'"),
        ("llama", {"tokenizer.ggml.add_space_prefix": "no"}, "add_space_prefix is not a boolean but str 'no'"),
        ("llama", {"tokenizer.ggml.add_bos_token": 0}, "tokenizer.ggml.add_bos_token is not a boolean but int 0"),
        ("gpt2", {"tokenizer.ggml.add_eos_token": "true"}, "add_eos_token is not a boolean but str 'true'"),
        (
            "bert",
            {"tokenizer.ggml.tokens": BERT_TOKENS, "tokenizer.ggml.normalizer.lowercase": "false"},
            "tokenizer.ggml.normalizer.lowercase is not a boolean but str 'false'",
        ),
    ],
)
def test_hostile_tokenizer_metadata_is_a_tokenizer_error_naming_the_file_and_key(tmp_path, model, changes, message):
    path = _write(tmp_path / "t.gguf", model, changes)
    with pytest.raises(TokenizerError) as caught:
        build_tokenizer(read_header(path))
    assert message in str(caught.value) and str(path) in str(caught.value)


@pytest.mark.parametrize("changes", [{"tokenizer.ggml.cls_token_id": 10**6}, {}])
def test_a_bert_cls_id_outside_the_vocabulary_is_dropped_as_llama_cpp_drops_it(tmp_path, changes):
    """An explicit id past the end, or none with fewer than 102 tokens (BERT's [CLS] is 101): no [CLS], no crash."""
    path = _write(tmp_path / "t.gguf", "bert", {"tokenizer.ggml.tokens": BERT_TOKENS, **changes})
    tokenizer = build_tokenizer(read_header(path))
    assert tokenizer.cls_token is None and tokenizer.encode("ab zz", add_special_tokens=True) == [5, 0]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "ran for more than 1"),
        ("{{ 'x' * 4000000000 }}", "would hold 4000000000 items"),
        ("{% for %}", "TemplateSyntaxError"),
    ],
    ids=["endless", "huge", "syntax"],
)
def test_a_hostile_gguf_chat_template_runs_under_the_template_budget(
    tmp_path, short_template_budget, template, message
):
    """tokenizer.chat_template is a program from the file: bounded like a tokenizer_config.json one, never a hang."""
    import json
    import time

    import modelport
    from modelport.testing import make_tiny_model
    from modelport.testing.gguf_files import write_gguf

    hf = make_tiny_model(tmp_path / "hf", num_hidden_layers=1)
    config = json.loads((hf / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (hf / "tokenizer_config.json").write_text(json.dumps(config))
    path = write_gguf(hf, tmp_path / "m.gguf")
    llm = modelport.LLM(str(path), dtype="float32")
    start = time.perf_counter()
    with pytest.raises(TokenizerError, match=message) as caught:
        llm.chat_prompt([{"role": "user", "content": "hi"}])
    assert time.perf_counter() - start < 10 and str(path) in str(caught.value)


def _spm_file(path, tokens):
    from gguf import GGUFWriter

    writer = GGUFWriter(path, "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", *tokens])
    writer.add_token_scores([0.0] * (len(tokens) + 3))
    writer.add_token_types([2, 3, 3] + [1] * len(tokens))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def test_one_very_long_sentencepiece_token_builds_in_linear_time(tmp_path):
    """A 400 kB token: every cut of it was sliced and looked up (35 s, the square of its length); now about none."""
    import time

    import transformers  # noqa: F401  (imported before the clock starts: the build imports it)

    path = _spm_file(tmp_path / "long.gguf", ["a", "aa", "aaa", "a" * 400_000])
    header = read_header(path)
    start = time.perf_counter()
    tokenizer = build_tokenizer(header)
    assert time.perf_counter() - start < 5.0 and tokenizer.encode("aaa", add_special_tokens=False) == [5]


def test_sentencepiece_tokens_of_every_length_are_a_tokenizer_error_within_the_merge_budget(tmp_path):
    """Tokens of 1 to 2999 characters (4.5 MB) would need 9 G characters compared: refused after 256 M."""
    import time

    path = _spm_file(tmp_path / "all.gguf", ["a" * n for n in range(1, 3000)])
    start = time.perf_counter()
    with pytest.raises(TokenizerError, match="too long to derive the SentencePiece merges") as caught:
        build_tokenizer(read_header(path))
    assert time.perf_counter() - start < 10.0 and str(path) in str(caught.value)
