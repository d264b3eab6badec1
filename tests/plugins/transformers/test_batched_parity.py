"""The batched backend against transformers itself, on architectures core has no native implementation for.

Each tiny model is written the way the testing kit writes its models (the
architecture's own transformers config class and model class, random weights,
``save_pretrained``). Generation runs through ``modelport.LLM`` on the CPU
executor with continuous batching: more prompts than ``max_num_seqs``, a
token budget that chunks the prefills, so that requests join while others
decode and prefill chunks share steps with decodes. Greedy tokens must equal
transformers' ``generate``; float32 logits of a mixed step (a chunked prefill
with cached context, a fresh prefill, decodes) must be within 1e-4 of
transformers' full forward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import modelport
from modelport.models.protocol import SequenceBatch

pytest.importorskip("modelport_hf", reason="reading a model folder needs modelport-hf")

VOCAB = 96

#: Architecture -> (config class, model class, config fields): tiny, and with the feature each is known for.
ARCHITECTURES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)),
    "gpt_neox": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, rotary_pct=0.5),
    ),
    "phi3": (
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96),
    ),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        # Soft-capped attention scores and logits; every other layer slides over 5 tokens.
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=96,
            sliding_window=5,
            query_pre_attn_scalar=16,
        ),
    ),
    "opt": (
        "OPTConfig",
        "OPTForCausalLM",
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128, word_embed_proj_dim=64),
    ),
    "starcoder2": (
        "Starcoder2Config",
        "Starcoder2ForCausalLM",
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=96,
            sliding_window=6,
        ),
    ),
    "cohere": (
        "CohereConfig",
        "CohereForCausalLM",
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96),
    ),
    "stablelm": (
        "StableLmConfig",
        "StableLmForCausalLM",
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96),
    ),
    "gpt_bigcode": (
        "GPTBigCodeConfig",
        "GPTBigCodeForCausalLM",
        dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, multi_query=True),  # one key/value head
    ),
    "olmo2": (
        "Olmo2Config",
        "Olmo2ForCausalLM",
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96),
    ),
}

PROMPTS = [[5, 17, 33, 8, 61, 12, 40], [3, 70, 22], [9, 9, 41, 50, 2 + 10, 77, 31, 6, 19, 44, 23], [88, 14]]
MAX_TOKENS = [6, 9, 5, 8]


def write_tiny_model(path: Path, architecture: str, seed: int = 0) -> Path:
    """A tiny model of ``architecture`` in ``path``: its config class, its model class, ``save_pretrained``."""
    import transformers

    config_name, model_name, fields = ARCHITECTURES[architecture]
    config = getattr(transformers, config_name)(
        vocab_size=VOCAB,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        max_position_embeddings=128,
        architectures=[model_name],
        dtype="float32",
        **fields,
    )
    # Wider than the default initialisation, so that random logits have no near-ties for rounding to flip.
    for spread in ("initializer_range", "init_std"):
        if hasattr(config, spread):
            setattr(config, spread, 0.1)
    torch.manual_seed(seed)
    getattr(transformers, model_name)(config).eval().save_pretrained(path)
    return path


def _reference(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_greedy_tokens_and_logits_equal_transformers(architecture, tmp_path, hf_and_backend):
    folder = write_tiny_model(tmp_path / architecture, architecture)
    llm = modelport.LLM(
        str(folder),
        dtype="float32",
        skip_tokenizer_init=True,
        max_num_seqs=2,  # four requests: two wait and join as the first finish
        max_num_batched_tokens=6,  # prompts longer than the budget are prefilled in chunks beside decodes
        block_size=4,
    )
    model = llm.executor.model
    assert type(model).__name__ == "TransformersModel" and model.batched
    assert llm.loaded.resolved.model_impl == "transformers"
    params = [modelport.SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in MAX_TOKENS]
    outputs = llm.generate(PROMPTS, params)
    reference = _reference(folder)
    reference.generation_config.eos_token_id = None  # as ignore_eos: no end token stops it (and none is suppressed)
    expected = []
    with torch.no_grad():
        for prompt, n in zip(PROMPTS, MAX_TOKENS, strict=True):
            ids = reference.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=0)
            expected.append(ids[0, len(prompt) :].tolist())
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert llm.executor.steps < sum(MAX_TOKENS)  # steps were shared: one forward served several requests

    # One step mixing a prefill chunk over cached context, a fresh prefill and a decode, all logits kept.
    cache = model.new_kv_cache(16, 4)
    long, short, single = PROMPTS[2], PROMPTS[1], PROMPTS[0]
    first = SequenceBatch(
        torch.tensor(long[:5] + single[:6]),
        torch.tensor([*range(5), *range(6)]),
        [5, 6],
        [0, 0],
        [[0, 1, 2], [3, 4]],
    )
    model.forward(first, cache)
    mixed = SequenceBatch(
        torch.tensor(long[5:] + short + single[6:]),
        torch.tensor([*range(5, len(long)), *range(len(short)), 6]),
        [len(long) - 5, len(short), 1],
        [5, 0, 6],
        [[0, 1, 2], [5, 6], [3, 4]],
        all_logits=True,
    )
    got = model.forward(mixed, cache)
    with torch.no_grad():
        full = [reference(torch.tensor([p])).logits[0] for p in (long, short, single)]
    want = torch.cat([full[0][5:], full[1], full[2][6:]])
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert (got - want).abs().max() < 1e-4


def test_the_trace_says_the_backend_serves_what_core_has_no_native_class_for(tmp_path, hf_and_backend):
    folder = write_tiny_model(tmp_path / "neox", "gpt_neox")
    resolved = modelport.resolve(str(folder), dtype="float32", skip_tokenizer_init=True)
    step = next(s for s in resolved.trace.steps if s.step == "architecture")
    assert (resolved.model_impl, step.plugin) == ("transformers", "modelport-transformers")
    assert "transformers implements GPTNeoXForCausalLM" in step.reason
