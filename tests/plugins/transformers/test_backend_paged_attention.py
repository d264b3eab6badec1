"""The backend's paged attention: decoding sequences through sparse products, longer ones gathered and padded.

A decode step's single-token sequences are attended by
``modelport_transformers.paged._attend_decodes`` (sparse products over the
cache pool, float32); where that path cannot serve, they are gathered and
padded like prefills. Both must give transformers' own logits, with sequences
of different lengths, scattered cache blocks, grouped key/value heads, a
sliding window shorter than the context and soft-capped scores (Gemma 2).
"""

from __future__ import annotations

import pytest
import torch

from modelport.models.protocol import SequenceBatch
from modelport_transformers import paged
from modelport_transformers.model import TransformersModel

PROMPTS = [[5, 17, 33, 8, 61, 12, 40], [3, 70, 22], [9, 9, 41, 50, 12, 77, 31, 6, 19, 44, 23]]
#: Scattered, out of order, never contiguous per sequence: each sequence's blocks interleave with the others'.
TABLES = [[7, 2, 11, 4, 0], [9, 5, 1], [3, 10, 6, 8, 12, 13]]
BLOCK = 4


def _gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        hidden_size=32,
        num_hidden_layers=2,  # one sliding layer (window 3), one global
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=64,
        vocab_size=96,
        sliding_window=3,
        query_pre_attn_scalar=16,
        attn_logit_softcapping=5.0,  # low, so that the cap changes the scores
        initializer_range=0.2,
        architectures=["Gemma2ForCausalLM"],
    )
    torch.manual_seed(0)
    reference = Gemma2ForCausalLM(config).eval()
    model = TransformersModel.from_config(config, dtype="float32", device="cpu")
    model.load_weights(reference.state_dict().items())
    assert model.batched
    return model, reference


def _decode_logits(model):
    """Prefill the prompts in one step, then decode their next tokens (given, not sampled) for three steps."""
    cache = model.new_kv_cache(16, BLOCK)
    tokens = [list(p) for p in PROMPTS]
    first = SequenceBatch(
        torch.tensor([t for p in tokens for t in p]),
        torch.tensor([i for p in tokens for i in range(len(p))]),
        [len(p) for p in tokens],
        [0] * len(tokens),
        TABLES,
    )
    model.forward(first, cache)
    rows = []
    for step in range(3):
        new = [(7 * step + 3 * i) % 90 + 3 for i in range(len(tokens))]
        batch = SequenceBatch(
            torch.tensor(new),
            torch.tensor([len(p) for p in tokens]),
            [1] * len(tokens),
            [len(p) for p in tokens],
            TABLES,
        )
        rows.append(model.forward(batch, cache))
        for sequence, token in zip(tokens, new, strict=True):
            sequence.append(token)
    return torch.stack(rows), tokens


def _reference_logits(reference, tokens):
    with torch.no_grad():
        full = [reference(torch.tensor([t])).logits[0] for t in tokens]
    # Step s decoded token index len(prompt) + s of each sequence.
    return torch.stack([torch.stack([f[len(p) + s] for f, p in zip(full, PROMPTS, strict=True)]) for s in range(3)])


def test_decodes_go_through_sparse_products_and_give_transformers_logits(monkeypatch):
    model, reference = _gemma2()
    assert paged.sparse_decode_works(torch.float32, torch.device("cpu"))  # probed before the count starts
    calls = []
    attend = paged._attend_decodes
    monkeypatch.setattr(paged, "_attend_decodes", lambda *args: calls.append(1) or attend(*args))
    got, tokens = _decode_logits(model)
    want = _reference_logits(reference, tokens)
    assert len(calls) == 3 * 2  # every decode step, in both layers
    assert got.shape == want.shape == (3, 3, 96)
    assert (got - want).abs().max() < 1e-4


def test_the_gathered_padded_path_gives_the_same_logits_where_sparse_products_cannot_serve(monkeypatch):
    model, reference = _gemma2()
    sparse, tokens = _decode_logits(model)
    monkeypatch.setattr(paged, "sparse_decode_works", lambda dtype, device: False)
    monkeypatch.setattr(paged, "_attend_decodes", lambda *args: pytest.fail("the sparse path ran"))
    gathered, _ = _decode_logits(model)
    assert (gathered - _reference_logits(reference, tokens)).abs().max() < 1e-4
    assert (gathered - sparse).abs().max() < 1e-4


def test_sparse_decodes_serve_float32_on_the_cpu_only():
    cpu = torch.device("cpu")
    assert paged.sparse_decode_works(torch.float32, cpu)
    assert not paged.sparse_decode_works(torch.bfloat16, cpu)
    assert not paged.sparse_decode_works(torch.float16, cpu)
    assert not paged.sparse_decode_works(torch.float32, torch.device("meta"))


def test_prompts_of_one_length_attend_their_own_keys_without_gathers_and_give_transformers_logits(monkeypatch):
    model, reference = _gemma2()  # a window and soft-capped scores: the masked paths, not only is_causal
    prompts = [p[:3] for p in PROMPTS]  # one length, nothing cached: one group, its rows in flat order
    wholes = []
    attend = paged._attend_group
    monkeypatch.setattr(
        paged, "_attend_group", lambda *args, whole=False: wholes.append(whole) or attend(*args, whole=whole)
    )
    batch = SequenceBatch(
        torch.tensor([t for p in prompts for t in p]),
        torch.tensor([i for p in prompts for i in range(len(p))]),
        [len(p) for p in prompts],
        [0] * len(prompts),
        TABLES,
        all_logits=True,
    )
    cache = model.new_kv_cache(16, BLOCK)
    got = model.forward(batch, cache)
    with torch.no_grad():
        want = reference(torch.tensor(prompts)).logits.reshape(-1, 96)
    assert wholes == [True, True]  # both layers took the path without gathers
    assert got.shape == want.shape == (9, 96)
    assert (got - want).abs().max() < 1e-4
    # the cache holds the prompts' keys: the next decode step still gives transformers' logits
    following = SequenceBatch(torch.tensor([4, 5, 6]), torch.tensor([3, 3, 3]), [1, 1, 1], [3, 3, 3], TABLES)
    with torch.no_grad():
        want = reference(torch.tensor([[*p, t] for p, t in zip(prompts, [4, 5, 6], strict=True)])).logits[:, -1]
    assert (model.forward(following, cache) - want).abs().max() < 1e-4


@pytest.mark.parametrize(
    ("context_lens", "softmax"),
    [
        ([6, 6, 6], "equal lengths: one dense softmax"),
        ([6, 4, 5], "padded with -inf"),
        ([40, 0, 1], "by segments: padding would be most of it"),
    ],
)
def test_decode_attention_equals_dense_attention_whatever_the_lengths(context_lens, softmax):
    from modelport_transformers.paged import LayerCache, _attend_decodes, _Decodes

    generator = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, block = 4, 2, 8, 4
    pool = LayerCache(16, block, kv_heads, dim, dtype=torch.float32, device="cpu")
    for tensor in (pool.keys, pool.values):
        tensor.copy_(torch.randn(tensor.shape, generator=generator))
    order = torch.randperm(16, generator=generator)  # scattered blocks
    needed = [(c + block) // block for c in context_lens]
    table = torch.zeros(len(context_lens), max(needed), dtype=torch.int64)
    used = 0
    for i, count in enumerate(needed):
        table[i, :count] = order[used : used + count]
        used += count
    count = len(context_lens)
    decodes = _Decodes(torch.arange(count), torch.arange(count), torch.tensor(context_lens), table, block)
    q = torch.randn(count, heads, dim, generator=generator)
    got = _attend_decodes(decodes, q, pool, 0.3, None, None)
    pattern = decodes.pattern(None, heads, kv_heads, torch.float32, pool.keys.view(-1, dim).shape[0])
    assert (pattern.padded_at is None) == softmax.startswith("equal")
    assert pattern.dense_softmax == (not softmax.startswith("by segments"))
    for i, context in enumerate(context_lens):
        index = torch.arange(context + 1)
        slots = table[i, index // block] * block + index % block
        keys, values = pool.read(pool.pool_rows(slots))  # [K, kv_heads, dim]
        keys, values = (t.repeat_interleave(heads // kv_heads, dim=1).transpose(0, 1) for t in (keys, values))
        want = torch.softmax(q[i][:, None] @ keys.transpose(1, 2) * 0.3, -1) @ values  # [heads, 1, dim]
        assert (got[i] - want[:, 0]).abs().max() < 1e-5
