"""Causal attention over a flat batch of sequences whose keys and values live in a paged cache.

:class:`BatchLayout` turns a :class:`~modelport.models.protocol.SequenceBatch`
into what every layer needs and computes it once per step: where each
sequence's new tokens sit in the flat batch, the cache slots they are written
to, the slots of the keys each sequence reads, and the masks. The mask of a
query at index ``q`` of its sequence admits the keys at indices ``k <= q``, and
with a sliding window of ``w`` only those with ``k > q - w`` (a token sees
itself and the ``w - 1`` before it), as transformers' masks do.

:func:`paged_attention` writes a layer's new keys and values into the cache
and attends with ``torch.nn.functional.scaled_dot_product_attention``. The
sequences with one new token (decoding) are attended together: their keys are
gathered from the cache into one padded ``[sequences, keys, heads, head_dim]``
tensor, masked past each sequence's length, and go through one call, in
float32 (CPU attention over one query in bfloat16 or float16 is several times
slower than in float32, and the gathered keys are few). The other sequences
(prefill chunks) are attended one by one; one with nothing cached reads its
keys straight from the step's own tensors. A sliding window reads only the
keys inside it.
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


class BatchLayout:
    """Per-step attention metadata shared by every layer.

    Raises:
        ValueError: the batch is inconsistent (token count, lengths) or a block table is too short.
    """

    def __init__(self, batch: SequenceBatch, cache: PagedKVCache, device: torch.device) -> None:
        n = batch.num_sequences
        if not (len(batch.context_lens) == len(batch.block_tables) == n):
            raise ValueError("query_lens, context_lens and block_tables must have one entry per sequence")
        total = sum(batch.query_lens)
        if batch.token_ids.numel() != total or batch.positions.numel() != total:
            raise ValueError(f"the batch holds {batch.token_ids.numel()} token(s) but query_lens sum to {total}")
        self.cache = cache
        self.device = device
        spans = []
        start = 0
        for query_len, context_len, table in zip(batch.query_lens, batch.context_lens, batch.block_tables, strict=True):
            if query_len < 1 or context_len < 0:
                raise ValueError(f"query_len must be >= 1 and context_len >= 0, got {query_len} and {context_len}")
            spans.append(SequenceSpan(start, start + int(query_len), int(context_len), tuple(table)))
            start += int(query_len)
        self.spans: tuple[SequenceSpan, ...] = tuple(spans)
        self.new_slots = (
            torch.cat([cache.slots(s.block_table, s.context_len, s.total_len) for s in spans]).to(device)
            if spans
            else torch.empty(0, dtype=torch.int64, device=device)
        )
        self.last_token_index = torch.tensor([s.end - 1 for s in spans], dtype=torch.int64, device=device)
        self._reads: dict[tuple[int, int | None], tuple[int, torch.Tensor | None, torch.Tensor | None]] = {}
        #: Indexes (in ``spans``) of the sequences with more than one new token, attended one by one.
        self.one_by_one: tuple[int, ...] = tuple(i for i, s in enumerate(spans) if s.query_len > 1)
        self._single = tuple(s for s in spans if s.query_len == 1)
        self._decodes: dict[int | None, DecodeReads] = {}

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """``(start, end)`` of each sequence in the flat batch."""
        return [(s.start, s.end) for s in self.spans]

    def keys_for(self, index: int, window: int | None) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
        """What sequence ``index`` reads under ``window``: the first key index, the key slots, the mask.

        The slots are ``None`` when every key is new in this step (read from
        the step's tensors); the mask is ``None`` when it admits everything.
        """
        found = self._reads.get((index, window))
        if found is not None:
            return found
        span = self.spans[index]
        first_query = span.context_len
        key_start = 0 if window is None else max(0, first_query - window + 1)
        query_index = torch.arange(first_query, span.total_len, device=self.device)[:, None]
        key_index = torch.arange(key_start, span.total_len, device=self.device)[None, :]
        allowed = key_index <= query_index
        if window is not None:
            allowed = allowed & (key_index > query_index - window)
        mask = None if bool(allowed.all()) else allowed
        slots = None
        if span.context_len > 0:
            slots = self.cache.slots(span.block_table, key_start, span.total_len).to(self.device)
        found = (key_start, slots, mask)
        self._reads[(index, window)] = found
        return found

    def decode_reads(self, window: int | None) -> DecodeReads | None:
        """What the batch's single-token sequences read under ``window``, gathered; ``None`` if it has none."""
        if not self._single:
            return None
        found = self._decodes.get(window)
        if found is not None:
            return found
        spans = self._single
        block = self.cache.block_size
        totals = torch.tensor([s.total_len for s in spans], dtype=torch.int64)
        # The one query sits at total - 1 and sees the keys k > total - 1 - window.
        starts = totals.new_zeros(len(spans)) if window is None else (totals - window).clamp(min=0)
        lengths = totals - starts
        width = int(lengths.max())
        needed = [-(-s.total_len // block) for s in spans]  # the tables cover this much (checked in __init__)
        blocks = max(needed)
        tables = torch.tensor([[*s.block_table[:n], *[0] * (blocks - n)] for s, n in zip(spans, needed, strict=True)])
        # Padding reads the sequence's last key again; the mask hides it.
        index = torch.minimum(starts[:, None] + torch.arange(width), totals[:, None] - 1)
        slots = tables.gather(1, index // block) * block + index % block
        mask = None
        if bool((lengths != width).any()):
            mask = (torch.arange(width) < lengths[:, None]).view(len(spans), 1, 1, width).to(self.device)
        rows = torch.tensor([s.start for s in spans], dtype=torch.int64, device=self.device)
        found = DecodeReads(rows, slots.view(-1).to(self.device), width, mask)
        self._decodes[window] = found
        return found


@dataclass(frozen=True)
class DecodeReads:
    """The keys the single-token sequences of a step read, gathered for one batched call.

    Attributes:
        rows: each sequence's token in the flat batch (``[S]``).
        slots: the cache slots of its keys, ``width`` per sequence, padded (``[S * width]``).
        width: keys per sequence after padding (the longest sequence's count).
        mask: ``[S, 1, 1, width]``, true where a key is read; ``None`` when none is padding.
    """

    rows: torch.Tensor
    slots: torch.Tensor
    width: int
    mask: torch.Tensor | None


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
        layout: the step's :class:`BatchLayout`.
        window: the layer's sliding window, or ``None`` for full attention.
        scale: the softmax scale (``head_dim ** -0.5`` for these models).

    Returns:
        ``[T, num_heads, head_dim]``.
    """
    layout.cache.write(layer, layout.new_slots, key, value)
    grouped = query.shape[1] != key.shape[1]
    out = torch.empty_like(query)
    decodes = layout.decode_reads(window)
    if decodes is not None:
        count, heads, dim = decodes.rows.numel(), key.shape[1], key.shape[2]
        keys, values = layout.cache.read(layer, decodes.slots)
        attended = F.scaled_dot_product_attention(
            query[decodes.rows].float().unsqueeze(2),
            keys.view(count, decodes.width, heads, dim).float().transpose(1, 2),
            values.view(count, decodes.width, heads, dim).float().transpose(1, 2),
            attn_mask=decodes.mask,
            scale=scale,
            enable_gqa=grouped,
        )
        out[decodes.rows] = attended[:, :, 0].to(out.dtype)
    for index in layout.one_by_one:
        span = layout.spans[index]
        key_start, slots, mask = layout.keys_for(index, window)
        if slots is None:
            offset = span.start + key_start
            keys, values = key[offset : span.end], value[offset : span.end]
        else:
            keys, values = layout.cache.read(layer, slots)
        attended = F.scaled_dot_product_attention(
            query[span.start : span.end].transpose(0, 1).unsqueeze(0),
            keys.transpose(0, 1).unsqueeze(0),
            values.transpose(0, 1).unsqueeze(0),
            attn_mask=mask,
            scale=scale,
            enable_gqa=grouped,
        )
        out[span.start : span.end] = attended[0].transpose(0, 1)
    return out
