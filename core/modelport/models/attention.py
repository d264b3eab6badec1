"""Causal attention over a flat batch of sequences whose keys and values live in a paged cache.

:class:`BatchLayout` turns a :class:`~modelport.models.protocol.SequenceBatch`
into what every layer needs and computes it once per step, as tensors: the
cache slots the new tokens are written to, and the sequences grouped so that
each group is attended in one ``torch.nn.functional.scaled_dot_product_attention``
call. The mask of a query at index ``q`` of its sequence admits the keys at
indices ``k <= q``, and with a sliding window of ``w`` only those with
``k > q - w`` (a token sees itself and the ``w - 1`` before it), as
transformers' masks do.

:func:`paged_attention` writes a layer's new keys and values into the cache in
place (``index_copy_`` into the preallocated blocks) and attends group by
group; the number of groups depends on the lengths in the batch, never on how
many sequences it holds:

- the single-token (decoding) sequences, grouped by how many cache blocks they
  read: a group's keys are gathered whole blocks at a time
  (``[sequences, blocks * block_size, heads, head_dim]``), so a sequence pads
  at most its last block, and the mask hides the slots past its length (and
  before its window). They are attended in float32: CPU attention over one
  query in bfloat16 or float16 is several times slower than in float32.
- the longer ones (prefills and prefill chunks), grouped by their number of
  new tokens and of cached ones, which share one mask: with nothing cached the
  keys are the step's own (a view when the group's sequences are adjacent in
  the batch), else whole blocks gathered from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from modelport.models.kv_cache import PagedKVCache
from modelport.models.protocol import SequenceBatch


@dataclass(frozen=True)
class SequenceSpan:
    """One sequence of the batch.

    Attributes:
        start: index of its first new token in the flat batch.
        end: one past its last new token.
        context_len: its tokens already in the cache.
        block_table: its cache blocks.
    """

    start: int
    end: int
    context_len: int
    block_table: tuple[int, ...]

    @property
    def query_len(self) -> int:
        """New tokens in this step."""
        return self.end - self.start

    @property
    def total_len(self) -> int:
        """Tokens in the cache after this step."""
        return self.context_len + self.query_len


@dataclass(frozen=True)
class AttentionGroup:
    """Sequences of one step attended together in one call.

    Attributes:
        rows: where the group's new tokens sit in the flat batch, ``count * query_len`` of them
            in sequence order: a ``slice`` when they are adjacent and in order, else an index tensor.
        count: sequences in the group.
        query_len: new tokens of each.
        blocks: the cache blocks each reads (``[count, blocks]``), or ``None`` when the keys are
            the step's own new tokens (a prefill with nothing cached).
        mask: true where a query may see a key, broadcastable to ``[count, 1, query_len, keys]``;
            ``None`` when it admits everything.
        causal: the keys are the step's own and the mask is the plain causal one
            (``is_causal`` instead of a mask tensor).
    """

    rows: slice | torch.Tensor
    count: int
    query_len: int
    blocks: torch.Tensor | None
    mask: torch.Tensor | None
    causal: bool = False


def _rows(starts: torch.Tensor, query_len: int, device: torch.device) -> slice | torch.Tensor:
    """The flat-batch rows of sequences starting at ``starts`` with ``query_len`` tokens each."""
    count = int(starts.numel())
    first = int(starts[0])
    if bool((starts == first + query_len * torch.arange(count)).all()):
        return slice(first, first + count * query_len)
    return (starts[:, None] + torch.arange(query_len)).reshape(-1).to(device)


class BatchLayout:
    """Per-step attention metadata shared by every layer.

    Raises:
        ValueError: the batch is inconsistent (token count, lengths) or a block table is too short.
    """

    def __init__(self, batch: SequenceBatch, cache: PagedKVCache, device: torch.device) -> None:
        n = batch.num_sequences
        if not (len(batch.context_lens) == len(batch.block_tables) == n):
            raise ValueError("query_lens, context_lens and block_tables must have one entry per sequence")
        query_lens = torch.as_tensor([int(q) for q in batch.query_lens], dtype=torch.int64)
        context_lens = torch.as_tensor([int(c) for c in batch.context_lens], dtype=torch.int64)
        total = int(query_lens.sum()) if n else 0
        if batch.token_ids.numel() != total or batch.positions.numel() != total:
            raise ValueError(f"the batch holds {batch.token_ids.numel()} token(s) but query_lens sum to {total}")
        if n and (int(query_lens.min()) < 1 or int(context_lens.min()) < 0):
            bad = int(((query_lens < 1) | (context_lens < 0)).nonzero()[0])
            raise ValueError(
                f"query_len must be >= 1 and context_len >= 0, got {int(query_lens[bad])} and {int(context_lens[bad])}"
            )
        self.cache = cache
        self.device = device
        self._batch = batch
        block = cache.block_size
        totals = context_lens + query_lens
        widths = torch.as_tensor([len(t) for t in batch.block_tables], dtype=torch.int64)
        needed = (totals + block - 1) // block
        short = (needed > widths).nonzero()
        if short.numel():
            i = int(short[0])
            raise ValueError(f"block table of {int(widths[i])} block(s) of {block} cannot hold {int(totals[i])} tokens")
        width = int(needed.max()) if n else 0
        # Each sequence's blocks, as far as this step reads them; the rest of a row is never read.
        tables = torch.as_tensor(
            [list(t[:width]) + [0] * (width - min(len(t), width)) for t in batch.block_tables], dtype=torch.int64
        )
        self.query_lens, self.context_lens, self.totals = query_lens, context_lens, totals
        self.starts = torch.cumsum(query_lens, 0) - query_lens
        self.tables = tables.view(n, width)
        # The slot of every new token: its index in its sequence, through the sequence's block table.
        sequence = torch.repeat_interleave(torch.arange(n), query_lens)
        index = context_lens[sequence] + torch.arange(total) - self.starts[sequence]
        self.new_slots = (self.tables[sequence, index // block] * block + index % block).to(device)
        self.last_token_index = (self.starts + query_lens - 1).to(device)
        self._groups: dict[int | None, tuple[AttentionGroup, ...]] = {}

    @property
    def spans(self) -> tuple[SequenceSpan, ...]:
        """Every sequence of the batch, in order."""
        return tuple(
            SequenceSpan(int(s), int(s + q), int(c), tuple(t))
            for s, q, c, t in zip(
                self.starts.tolist(),
                self.query_lens.tolist(),
                self.context_lens.tolist(),
                self._batch.block_tables,
                strict=True,
            )
        )

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """``(start, end)`` of each sequence in the flat batch."""
        return [(s, s + q) for s, q in zip(self.starts.tolist(), self.query_lens.tolist(), strict=True)]

    def groups(self, window: int | None) -> tuple[AttentionGroup, ...]:
        """The step's sequences grouped for attention under ``window`` (computed once per window)."""
        found = self._groups.get(window)
        if found is None:
            found = self._decode_groups(window) + self._prefill_groups(window)
            self._groups[window] = found
        return found

    def _read_blocks(self, members: torch.Tensor, window: int | None, first_query: torch.Tensor) -> torch.Tensor:
        """First block index each member reads (its window's start for ``first_query``, else 0)."""
        if window is None:
            return torch.zeros_like(members)
        return (first_query - window + 1).clamp(min=0) // self.cache.block_size

    def _decode_groups(self, window: int | None) -> tuple[AttentionGroup, ...]:
        single = (self.query_lens == 1).nonzero().squeeze(1)
        if not single.numel():
            return ()
        block = self.cache.block_size
        totals = self.totals[single]
        first = self._read_blocks(single, window, totals - 1)
        counts = (totals - 1) // block - first + 1
        groups = []
        for count in torch.unique(counts).tolist():
            chosen = (counts == count).nonzero().squeeze(1)
            members, member_totals, member_first = single[chosen], totals[chosen], first[chosen]
            blocks = self.tables[members[:, None], member_first[:, None] + torch.arange(count)]
            key = member_first[:, None] * block + torch.arange(count * block)  # each key's index in its sequence
            query = member_totals[:, None] - 1
            allowed = key <= query
            if window is not None:
                allowed &= key > query - window
            mask = None if bool(allowed.all()) else allowed.view(-1, 1, 1, count * block).to(self.device)
            rows = _rows(self.starts[members], 1, self.device)
            groups.append(AttentionGroup(rows, int(members.numel()), 1, blocks.to(self.device), mask))
        return tuple(groups)

    def _prefill_groups(self, window: int | None) -> tuple[AttentionGroup, ...]:
        longer = (self.query_lens > 1).nonzero().squeeze(1)
        if not longer.numel():
            return ()
        block = self.cache.block_size
        shapes: dict[tuple[int, int], list[int]] = {}
        for i, q, c in zip(
            longer.tolist(), self.query_lens[longer].tolist(), self.context_lens[longer].tolist(), strict=True
        ):
            shapes.setdefault((q, c), []).append(i)
        groups = []
        for (query_len, context_len), indexes in shapes.items():
            members = torch.tensor(indexes, dtype=torch.int64)
            rows = _rows(self.starts[members], query_len, self.device)
            total = context_len + query_len
            query = torch.arange(context_len, total)[:, None]
            if context_len == 0:
                key = torch.arange(total)[None, :]
                blocks = None
            else:
                first = 0 if window is None else max(0, context_len - window + 1) // block
                count = (total - 1) // block - first + 1
                key = (first * block + torch.arange(count * block))[None, :]
                blocks = self.tables[members][:, first : first + count].to(self.device)
            allowed = key <= query
            if window is not None:
                allowed &= key > query - window
            causal = blocks is None and (window is None or window >= total)
            mask = None if causal or bool(allowed.all()) else allowed.view(1, 1, query_len, -1).to(self.device)
            groups.append(AttentionGroup(rows, len(indexes), query_len, blocks, mask, causal))
        return tuple(groups)


def paged_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    layer: int,
    layout: BatchLayout,
    window: int | None,
    scale: float,
) -> torch.Tensor:
    """Causal attention of the batch's new tokens; their keys and values are written to the cache first.

    Args:
        query: ``[T, num_heads, head_dim]``, rotated.
        key: ``[T, num_kv_heads, head_dim]``, rotated.
        value: ``[T, num_kv_heads, head_dim]``.
        layer: the layer's index in the cache.
        layout: the step's :class:`BatchLayout`, or another layout that has an ``attend``
            method taking these arguments (but ``layout``), which then does all of it:
            modelport-cuda's static decode layout, whose attention a CUDA graph records.
        window: the layer's sliding window, or ``None`` for full attention.
        scale: the softmax scale (``head_dim ** -0.5`` for these models).

    Returns:
        ``[T, num_heads, head_dim]``.
    """
    attend = getattr(layout, "attend", None)
    if attend is not None:
        attended: torch.Tensor = attend(query, key, value, layer=layer, window=window, scale=scale)
        return attended
    cache = layout.cache
    cache.write(layer, layout.new_slots, key, value)
    tokens, heads, dim = query.shape
    kv_heads = key.shape[1]
    grouped = heads != kv_heads
    groups = layout.groups(window)
    out: torch.Tensor | None = None
    for group in groups:
        count, length = group.count, group.query_len
        whole = isinstance(group.rows, slice) and group.rows.start == 0 and group.rows.stop == tokens
        q = query[group.rows].reshape(count, length, heads, dim).transpose(1, 2)
        if group.blocks is None:
            keys = key[group.rows].reshape(count, length, kv_heads, dim)
            values = value[group.rows].reshape(count, length, kv_heads, dim)
        else:
            keys, values = cache.read_blocks(layer, group.blocks.view(-1))
            keys = keys.view(count, -1, kv_heads, dim)
            values = values.view(count, -1, kv_heads, dim)
        keys, values = keys.transpose(1, 2), values.transpose(1, 2)
        single = length == 1 and query.dtype in (torch.bfloat16, torch.float16)
        if single:  # one query per sequence: float32 is the fast path on the CPU
            q, keys, values = q.float(), keys.float(), values.float()
        attended = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=group.mask, is_causal=group.causal, scale=scale, enable_gqa=grouped
        )
        result = attended.transpose(1, 2).reshape(count * length, heads, dim)
        if whole and len(groups) == 1:
            return result.to(query.dtype)
        if out is None:
            out = torch.empty_like(query)
        out[group.rows] = result.to(query.dtype)
    if out is None:
        return torch.empty_like(query)
    return out
