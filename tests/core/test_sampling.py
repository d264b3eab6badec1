"""SamplingParams validation and the sampler's filters, on real tensors."""

from __future__ import annotations

import pytest
import torch

import modelport
from modelport.errors import InvalidOptionError
from modelport.sampling import SamplingParams, apply_repetition_penalty, filter_logits, sample, sample_greedy


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("temperature", -0.1),
        ("top_k", -2),
        ("top_p", 0.0),
        ("min_p", 1.5),
        ("repetition_penalty", 0),
        ("seed", "7"),
        ("logprobs", 21),
        ("stop", [""]),
        ("stop_token_ids", [-1]),
        ("ignore_eos", 1),
    ],
)
def test_bad_values_are_typed_errors_naming_the_field(field, value):
    with pytest.raises(InvalidOptionError, match=f"option {field!r}"):
        SamplingParams(**{field: value})


def test_vllm_field_names_and_defaults():
    params = modelport.SamplingParams()
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k, params.min_p) == (16, 1.0, 1.0, 0, 0.0)
    assert SamplingParams(stop="END").stop_strings == ("END",)
    assert SamplingParams(temperature=0).greedy


def test_top_k_keeps_the_k_most_likely():
    logits = torch.tensor([1.0, 4.0, 3.0, 2.0])
    kept = torch.isfinite(filter_logits(logits, SamplingParams(top_k=2)))
    assert kept.tolist() == [False, True, True, False]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = torch.isfinite(filter_logits(probs.log(), SamplingParams(top_p=0.8)))
    assert kept.tolist() == [True, True, False, False]
    kept = torch.isfinite(filter_logits(probs.log(), SamplingParams(top_p=0.81)))
    assert kept.tolist() == [True, True, True, False]


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    probs = torch.tensor([0.6, 0.3, 0.07, 0.03])
    kept = torch.isfinite(filter_logits(probs.log(), SamplingParams(min_p=0.1)))
    assert kept.tolist() == [True, True, True, False]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([2.0, -2.0, 2.0])
    out = apply_repetition_penalty(logits.clone(), torch.tensor([0, 1, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 2.0]


def test_greedy_is_argmax_and_seeded_sampling_is_reproducible():
    logits = torch.tensor([0.1, 3.0, 0.2, 2.9])
    assert sample(logits, SamplingParams(temperature=0), None) == 1
    params = SamplingParams(temperature=1.0)
    draws = [sample(logits, params, torch.Generator().manual_seed(7)) for _ in range(3)]
    assert len(set(draws)) == 1
    spread = {sample(logits, params, torch.Generator().manual_seed(s)) for s in range(40)}
    assert {1, 3} <= spread  # both likely tokens come up across seeds


def test_batched_greedy_picks_what_sample_picks_per_row_ties_included():
    logits = torch.tensor([[0.1, 3.0, 0.2, 2.9], [1.0, 1.0, 0.0, 1.0], [-5.0, -1.0, -1.0, -9.0]])
    greedy = SamplingParams(temperature=0)
    assert sample_greedy(logits) == [sample(row, greedy, None) for row in logits] == [1, 0, 1]
