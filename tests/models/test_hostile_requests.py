"""Hostile requests (issue 11, point 6): bad sampling values are typed errors, a bad prompt fails alone."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("modelport_hf", reason="the executor tests read kit-made Hugging Face folders")

import modelport
from modelport import SamplingParams
from modelport.errors import InvalidOptionError
from modelport.testing import make_tiny_model

GREEDY = SamplingParams(temperature=0, max_tokens=8)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("requests") / "m", num_hidden_layers=1, max_position_embeddings=64)
    return modelport.LLM(str(folder), dtype="float32", model_impl="native")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("repetition_penalty", math.nan),
        ("repetition_penalty", math.inf),
        ("top_p", math.nan),
        ("min_p", math.nan),
        ("seed", 2**64),
        ("seed", -(2**63) - 1),
        ("max_tokens", 0),
        ("max_tokens", 1.5),
    ],
)
def test_non_finite_and_out_of_range_sampling_values_are_typed_errors(field, value):
    with pytest.raises(InvalidOptionError) as info:
        SamplingParams(**{field: value})
    assert info.value.option == field and repr(value) in str(info.value)


def test_the_largest_seeds_still_work():
    assert SamplingParams(seed=2**64 - 1).seed == 2**64 - 1 and SamplingParams(seed=-(2**63)).seed == -(2**63)


def test_an_absurd_max_tokens_is_clamped_to_the_context_length(llm):
    prompt = [5, 6, 7, 8]
    result = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=10**30, ignore_eos=True))[0]
    assert result.error is None and result.outputs[0].finish_reason == "length"
    assert len(result.outputs[0].token_ids) == 64 - len(prompt)


def test_a_prompt_whose_encode_raises_fails_alone_and_the_others_finish(llm):
    bad = "ab\ud800cd"  # a lone surrogate: the tokenizer cannot encode it
    results = llm.generate(["Hello world", bad, [5, 6, 7]], GREEDY)
    assert results[1].error.startswith("the prompt could not be encoded")
    assert results[1].outputs[0].finish_reason == "error"
    assert results[0].error is None and len(results[0].outputs[0].token_ids) == 8
    assert results[2].error is None and len(results[2].outputs[0].token_ids) == 8


def test_a_tokenizer_regex_that_panics_on_a_prompt_fails_that_prompt_alone(tmp_path):
    import json

    folder = make_tiny_model(tmp_path / "m", num_hidden_layers=1, max_position_embeddings=64)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    # Catastrophic backtracking: onig gives up past its retry limit and the Rust tokenizer panics.
    split = {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": False}
    tokenizer["pre_tokenizer"] = split
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    llm = modelport.LLM(str(folder), dtype="float32", model_impl="native")
    results = llm.generate(["Hello world", "a" * 40 + "!"], GREEDY)
    assert results[1].error.startswith("the prompt could not be encoded (PanicException")
    assert results[0].error is None and len(results[0].outputs[0].token_ids) == 8
