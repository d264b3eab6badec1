"""Native paged attention: grouped calls over the paged cache equal dense attention sequence by sequence."""

from __future__ import annotations

import math

import pytest
import torch

from modelport.models.attention import BatchLayout, paged_attention
from modelport.models.kv_cache import PagedKVCache
from modelport.models.protocol import SequenceBatch

BLOCK = 4
HEADS, KV_HEADS, DIM = 6, 2, 8


def _dense(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, first: int, window: int | None):
    """Reference: queries at indices first.. of one sequence over all its keys, in float64, head by head."""
    q, k, v = (t.double() for t in (query, keys, values))
    repeat = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    qi = torch.arange(first, first + q.shape[0])[:, None]
    ki = torch.arange(k.shape[0])[None, :]
    allowed = ki <= qi
    if window is not None:
        allowed &= ki > qi - window
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def _run(sequences: list[tuple[int, int]], window: int | None, dtype: torch.dtype, seed: int = 0):
    """Attend a batch of (context_len, query_len) sequences both ways; return (paged, dense, layout, cache)."""
    generator = torch.Generator().manual_seed(seed)
    blocks_needed = [-(-(c + q) // BLOCK) for c, q in sequences]
    order = torch.randperm(sum(blocks_needed) + 3, generator=generator).tolist()  # scattered, unordered blocks
    tables, at = [], 0
    for count in blocks_needed:
        tables.append(order[at : at + count])
        at += count
    cache = PagedKVCache(1, len(order), BLOCK, KV_HEADS, DIM, dtype=dtype, device="cpu")
    full = [
        (
            torch.randn(c + q, HEADS, DIM, generator=generator).to(dtype),
            torch.randn(c + q, KV_HEADS, DIM, generator=generator).to(dtype),
            torch.randn(c + q, KV_HEADS, DIM, generator=generator).to(dtype),
        )
        for c, q in sequences
    ]
    for (c, _), table, (_, k, v) in zip(sequences, tables, full, strict=True):
        if c:
            cache.write(0, cache.slots(table, 0, c), k[:c], v[:c])
    batch = SequenceBatch(
        token_ids=torch.zeros(sum(q for _, q in sequences), dtype=torch.long),
        positions=torch.cat([torch.arange(c, c + q) for c, q in sequences]),
        query_lens=[q for _, q in sequences],
        context_lens=[c for c, _ in sequences],
        block_tables=tables,
    )
    layout = BatchLayout(batch, cache, torch.device("cpu"))
    query = torch.cat([qs[c:] for (c, _), (qs, _, _) in zip(sequences, full, strict=True)])
    key = torch.cat([ks[c:] for (c, _), (_, ks, _) in zip(sequences, full, strict=True)])
    value = torch.cat([vs[c:] for (c, _), (_, _, vs) in zip(sequences, full, strict=True)])
    paged = paged_attention(query, key, value, layer=0, layout=layout, window=window, scale=DIM**-0.5)
    dense = torch.cat([_dense(qs[c:], ks, vs, c, window) for (c, _), (qs, ks, vs) in zip(sequences, full, strict=True)])
    return paged, dense, layout, cache


# Decodes of 1, 2 and 3 blocks (two sharing a block count), prefills with nothing cached (two of one
# length, apart in the batch), prefill chunks after cached tokens, in a shuffled order.
MIXED = [(5, 1), (0, 7), (11, 1), (6, 5), (0, 3), (3, 1), (0, 7), (9, 1), (4, 4), (0, 1)]


@pytest.mark.parametrize("window", [None, 3, 6, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_paged_attention_equals_dense_attention_per_sequence(window, dtype):
    paged, dense, _, _ = _run(MIXED, window, dtype)
    tolerance = 1e-5 if dtype is torch.float32 else 2e-2
    assert paged.dtype is dtype
    torch.testing.assert_close(paged.double(), dense, rtol=tolerance, atol=tolerance)


def test_the_calls_per_layer_depend_on_lengths_not_on_the_number_of_sequences():
    # 48 decoding sequences reading 2 or 3 blocks, 16 prefills of 8 tokens: three groups.
    sequences = [(4 + i % 7, 1) for i in range(48)] + [(0, 8)] * 16
    paged, dense, layout, _ = _run(sequences, None, torch.float32)
    torch.testing.assert_close(paged.double(), dense, rtol=1e-5, atol=1e-5)
    groups = layout.groups(None)
    assert sorted((g.count, g.query_len, None if g.blocks is None else g.blocks.shape[1]) for g in groups) == [
        (16, 8, None),
        (20, 1, 3),
        (28, 1, 2),
    ]
    prefill = next(g for g in groups if g.query_len == 8)
    assert prefill.rows == slice(48, 48 + 16 * 8)  # adjacent: the step's keys are used as a view
    assert prefill.causal and prefill.mask is None


@pytest.mark.parametrize("context", [6, 7])
def test_a_batch_of_equal_decodes_is_one_call(context):
    paged, dense, layout, _ = _run([(context, 1)] * 32, None, torch.float32)
    torch.testing.assert_close(paged.double(), dense, rtol=1e-5, atol=1e-5)
    (group,) = layout.groups(None)
    assert group.rows == slice(0, 32) and group.blocks is not None and tuple(group.blocks.shape) == (32, 2)
    if context + 1 == 2 * BLOCK:
        assert group.mask is None  # both blocks full: nothing to hide
    else:  # the last block's free slot is hidden
        assert group.mask is not None and group.mask.sum().item() == 32 * (context + 1)


def test_new_keys_are_written_into_the_cache_in_place():
    cache = PagedKVCache(1, 4, BLOCK, KV_HEADS, DIM, dtype=torch.float32, device="cpu")
    pointers = (cache.keys[0].data_ptr(), cache.values[0].data_ptr())
    batch = SequenceBatch(
        token_ids=torch.zeros(3, dtype=torch.long),
        positions=torch.tensor([3, 4, 5]),
        query_lens=[3],
        context_lens=[3],
        block_tables=[[2, 0]],
    )
    layout = BatchLayout(batch, cache, torch.device("cpu"))
    query, key, value = torch.randn(3, HEADS, DIM), torch.randn(3, KV_HEADS, DIM), torch.randn(3, KV_HEADS, DIM)
    paged_attention(query, key, value, layer=0, layout=layout, window=None, scale=1.0)
    assert (cache.keys[0].data_ptr(), cache.values[0].data_ptr()) == pointers
    assert layout.new_slots.tolist() == [2 * BLOCK + 3, 0, 1]  # index 3 in block 2, then 4 and 5 in block 0
    torch.testing.assert_close(cache.keys[0][2, 3], key[0])
    torch.testing.assert_close(cache.values[0][0, :2], value[1:])


def test_read_blocks_returns_whole_blocks_in_table_order():
    cache = PagedKVCache(2, 6, BLOCK, KV_HEADS, DIM, dtype=torch.float32, device="cpu")
    keys = torch.arange(6 * BLOCK * KV_HEADS * DIM, dtype=torch.float32).view(6 * BLOCK, KV_HEADS, DIM)
    cache.write(1, torch.arange(6 * BLOCK), keys, -keys)
    got_keys, got_values = cache.read_blocks(1, torch.tensor([4, 1]))
    assert tuple(got_keys.shape) == (2, BLOCK, KV_HEADS, DIM)
    torch.testing.assert_close(got_keys.reshape(-1, KV_HEADS, DIM), keys[[*range(16, 20), *range(4, 8)]])
    torch.testing.assert_close(got_values, -got_keys)
    assert cache.keys[0].abs().sum() == 0  # the other layer untouched


def test_a_short_block_table_is_refused():
    cache = PagedKVCache(1, 4, BLOCK, KV_HEADS, DIM, dtype=torch.float32, device="cpu")
    batch = SequenceBatch(
        token_ids=torch.zeros(2, dtype=torch.long),
        positions=torch.tensor([4, 5]),
        query_lens=[2],
        context_lens=[4],
        block_tables=[[0]],
    )
    with pytest.raises(ValueError, match="block table of 1 block"):
        BatchLayout(batch, cache, torch.device("cpu"))
