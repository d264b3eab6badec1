"""Drives a native model and transformers' reference the same way, for the parity tests.

:class:`PagedRunner` plays the executor: sequences get cache blocks from a
shuffled pool as they grow (so block tables are scattered, as after hours of
serving), and every step is one :class:`~modelport.models.protocol.SequenceBatch`.
The reference runs each sequence alone, through transformers' own forward and
``DynamicCache``, with its rotary state reset first (dynamic NTK keeps state in
the module; see modelport.models.rope).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from modelport.models.protocol import SequenceBatch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: tiny matrices gain nothing from more, and on a busy machine waiting threads cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
}
VOCAB = 128
MAX_POSITIONS = 32


def tiny_config(arch: str, **overrides: Any) -> Any:
    """A random tiny config of ``arch`` (float32); ``max_position_embeddings`` is 32."""
    import transformers

    config_name, arch_name = ARCHITECTURES[arch]
    fields: dict[str, Any] = dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=VOCAB,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=1,
        eos_token_id=2,
        architectures=[arch_name],
    )
    if arch == "mixtral":
        fields.update(num_local_experts=4, num_experts_per_tok=2)
    fields.update(overrides)
    return getattr(transformers, config_name)(**fields)


def reference_model(config: Any, folder: Path, seed: int = 0) -> Any:
    """transformers' model for ``config`` with seeded random weights, saved in ``folder``."""
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, config.architectures[0])(config).eval()
    with torch.no_grad():
        # Larger weights than the initialiser's make logits spread, so greedy choices are not near-ties.
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.08)
    model.save_pretrained(folder)
    return model


def _fresh(reference: Any) -> Any:
    rotary = reference.model.rotary_emb
    rotary.inv_freq = rotary.original_inv_freq.clone()
    rotary.max_seq_len_cached = rotary.original_max_seq_len
    return reference


def reference_steps(reference: Any, chunks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """transformers' logits for one sequence fed in ``chunks`` (the first a prefill), one cache throughout."""
    from transformers import DynamicCache

    model = _fresh(reference)
    cache = DynamicCache(config=model.config)
    out, seen = [], 0
    with torch.no_grad():
        for chunk in chunks:
            positions = torch.arange(seen, seen + len(chunk))[None]
            logits = model(chunk[None], past_key_values=cache, use_cache=True, position_ids=positions).logits[0]
            out.append(logits)
            seen += len(chunk)
    return out


def reference_generate(reference: Any, prompt: torch.Tensor, max_new_tokens: int) -> list[int]:
    """transformers' greedy ``generate``: the new tokens only."""
    model = _fresh(reference)
    with torch.no_grad():
        out = model.generate(
            prompt[None],
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


class PagedRunner:
    """Runs a native model over a paged cache, one SequenceBatch per step."""

    def __init__(self, model: Any, *, num_blocks: int = 96, block_size: int = 4, seed: int = 0) -> None:
        self.model = model
        self.block_size = block_size
        self.cache = model.new_kv_cache(num_blocks, block_size)
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)
        self.tables: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}

    def step(self, work: dict[int, torch.Tensor], *, all_logits: bool = False) -> torch.Tensor:
        """One forward: ``work`` maps a sequence id to its new tokens (a new id starts a sequence)."""
        ids, positions, query_lens, context_lens, tables = [], [], [], [], []
        for seq, tokens in work.items():
            start = self.lengths.get(seq, 0)
            table = self.tables.setdefault(seq, [])
            while len(table) * self.block_size < start + len(tokens):
                table.append(self.free.pop())
            ids.append(tokens)
            positions.append(torch.arange(start, start + len(tokens)))
            query_lens.append(len(tokens))
            context_lens.append(start)
            tables.append(list(table))
            self.lengths[seq] = start + len(tokens)
        batch = SequenceBatch(torch.cat(ids), torch.cat(positions), query_lens, context_lens, tables, all_logits)
        return self.model.forward(batch, self.cache)

    def greedy(self, prompts: Sequence[torch.Tensor], max_new_tokens: int, eos_token_id: int | None) -> list[list[int]]:
        """Greedy generation for every prompt at once: one batched prefill, then one token per step."""
        logits = self.step(dict(enumerate(prompts)))
        out: list[list[int]] = [[] for _ in prompts]
        active = list(range(len(prompts)))
        while active:
            chosen = logits.argmax(-1).tolist()
            still = []
            for seq, token in zip(active, chosen, strict=True):
                out[seq].append(token)
                if token != eos_token_id and len(out[seq]) < max_new_tokens:
                    still.append(seq)
            active = still
            if active:
                logits = self.step({seq: torch.tensor([out[seq][-1]]) for seq in active})
        return out


def load_native(folder: Path, target: str, **options: Any) -> Any:
    """``modelport.load`` of ``folder`` in float32, no tokenizer; checks that native ``target`` used every weight."""
    import modelport

    loaded = modelport.load(str(folder), dtype="float32", skip_tokenizer_init=True, **options)
    assert loaded.resolved.architecture.target == target
    assert loaded.resolved.model_impl == "native"
    assert loaded.weights.missing == () and loaded.weights.unexpected == ()
    return loaded.model


def prefill_then_decode(
    model: Any, prompts: Sequence[torch.Tensor], steps: Sequence[torch.Tensor]
) -> list[list[torch.Tensor]]:
    """One batched prefill of ``prompts`` (every logit), then one decode step per ``steps`` entry (a token a sequence).

    Returns, for each sequence, its logits in order: the prefill rows, then one row a decode step.
    """
    runner = PagedRunner(model)
    got: list[list[torch.Tensor]] = [[] for _ in prompts]
    prefill = runner.step(dict(enumerate(prompts)), all_logits=True)
    for seq, rows in enumerate(prefill.split([len(prompt) for prompt in prompts])):
        got[seq].append(rows)
    for tokens in steps:
        logits = runner.step({seq: tokens[seq : seq + 1] for seq in range(len(prompts))})
        for seq in range(len(prompts)):
            got[seq].append(logits[seq : seq + 1])
    return got


def worst_against_reference(
    model: Any,
    reference_logits: Callable[[list[int]], torch.Tensor],
    *,
    vocab: int,
    prompt_lengths: Sequence[int],
    decode_steps: int,
    seed: int = 1,
) -> float:
    """Random prompts prefilled in one batch, then decoded together; the worst logit against ``reference_logits``.

    ``reference_logits`` maps a whole sequence of ids to its float64 logits, one row a position.
    """
    generator = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (n,), generator=generator) for n in prompt_lengths]
    steps = [torch.randint(3, vocab, (len(prompts),), generator=generator) for _ in range(decode_steps)]
    got = prefill_then_decode(model, prompts, steps)
    worst = 0.0
    for seq, prompt in enumerate(prompts):
        ids = prompt.tolist() + [int(tokens[seq]) for tokens in steps]
        expected = reference_logits(ids)
        mine = torch.cat(got[seq]).double()
        assert mine.shape == expected.shape
        worst = max(worst, (mine - expected).abs().max().item())
    return worst
