"""Paged attention for transformers models: one forward over a flat batch of sequences.

transformers looks a model's attention function up by name in its
``AttentionInterface``. The backend registers :func:`paged_attention` there
under :data:`ATTENTION` and builds its models with that name, so every
attention layer of a model calls it with the layer's queries, keys and values
for the whole flat batch (``[1, heads, T, head_dim]``: the new tokens of all
sequences, prefills and decodes mixed, in one row). The function writes the
new keys and values into the paged cache (blocks of the executor's block
tables, one :class:`LayerCache` per layer, each block head-major), reads back
each sequence's keys and values, and attends each sequence's queries to its
own keys only.

What a step needs to know (which tokens belong to which sequence, their cache
slots, the masks) is computed once per step, as tensors, by :class:`PagedStep`
and shared by every layer; the layers then run a fixed number of tensor
operations whatever the number of sequences:

- the single-token (decoding) sequences, in float32 on the CPU, as sparse products
  over the cache pool itself (:class:`_Decodes`): the scores of each query against
  the pool rows holding its sequence's keys (``torch.sparse.sampled_addmm``),
  a softmax over each query's entries, and the values at the same rows summed
  with those weights (``F.embedding_bag``). Nothing is gathered, padded or
  masked; on a 32-sequence decode step of a 100M GPT-NeoX (one thread) this
  took the attention from about 60 of the step's 160 ms of CPU time to about
  38 of 135 (gathering and SDPA's per-head products cost more than reading
  the keys and values once). In other dtypes and on other devices they are
  gathered and padded like the longer ones;
- the longer ones (prefills and prefill chunks): their keys and values
  gathered from the cache (fresh prefills: the step's own), padded to the
  longest member, masked (prompts of one length with nothing cached: SDPA's
  ``is_causal``, no mask), and attended in one SDPA call.

The step travels to the attention function through a context variable that
:meth:`PagedStep.active` sets around the module's forward; outside it (a plain
``forward(input_ids)``), the function is transformers' own SDPA attention.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from modelport.errors import ModelportError
from modelport.models.protocol import SequenceBatch

#: The name the backend's attention function is registered under in transformers' ``AttentionInterface``.
ATTENTION = "modelport_paged"

_CURRENT: contextvars.ContextVar[PagedStep | None] = contextvars.ContextVar("modelport_paged_step", default=None)


def register_attention() -> None:
    """Register :func:`paged_attention` in transformers' ``AttentionInterface`` (idempotent).

    No attention-mask function is registered with it, so transformers builds no
    mask for these models: the masks are the step's own.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, paged_attention)


class LayerCache:
    """One attention layer's keys and values in the pool, each block head-major.

    Keys and values are ``[num_blocks, kv_heads, block_size, head_dim]``: within a
    block, one head's keys are ``block_size`` adjacent rows. A decoding query
    reads its sequence's keys of one head, so its reads run over whole blocks of
    adjacent memory (4 KB for 16 tokens of 64 floats) instead of one row in every
    ``kv_heads`` (core's :class:`~modelport.models.kv_cache.PagedKVCache` keeps
    a token's heads together, the layout its gathers of whole blocks want). On
    the development machine's AMD EPYC (one thread, 32 sequences of 97 tokens,
    12 heads of 64, the keys and values not in the CPU's cache) the sparse
    products of a decode step's layer took 2.7 ms instead of 3.7 alone, and
    the 100M GPT-NeoX's decode step spent 42 ms in attention instead of 53.

    A pool row (``keys.view(-1, head_dim)``) is named by a slot (``block *
    block_size + offset``) and a key/value head: ``(block * kv_heads + head) *
    block_size + offset`` (:meth:`pool_rows`).
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        shape = (num_blocks, num_kv_heads, block_size, head_dim)
        # Zeroed, so that a slot never written holds no NaN that a masked-out read could spread.
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def nbytes(self) -> int:
        """Memory the layer's keys and values take, in bytes."""
        return 2 * self.keys.numel() * self.keys.element_size()

    def pool_rows(self, slots: torch.Tensor) -> torch.Tensor:
        """``[N * kv_heads]``: the pool rows of ``slots`` (``[N]``), each slot's heads in order."""
        bs, heads = self.block_size, self.num_kv_heads
        head = torch.arange(heads, device=slots.device)
        return ((slots // bs * heads)[:, None] + head[None, :]).mul_(bs).add_((slots % bs)[:, None]).view(-1)

    def pool_rows_once(self, memo: dict[int, torch.Tensor], slots: torch.Tensor) -> torch.Tensor:
        """:meth:`pool_rows` of ``slots``, kept in ``memo`` by number of heads: a step computes them once a shape."""
        rows = memo.get(self.num_kv_heads)
        if rows is None:
            rows = memo[self.num_kv_heads] = self.pool_rows(slots)
        return rows

    def write(self, rows: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store ``key`` and ``value`` (``[N, kv_heads, head_dim]``) at pool ``rows`` (from :meth:`pool_rows`).

        ``index_put_`` takes the layer's strided keys as they are (``index_copy_`` wanted them flattened
        into ``[N * kv_heads, head_dim]``, a copy once rotated): 4.1 ms instead of 5.6 for 2,048 tokens
        of 12 heads of 64, 29 us instead of 38 for 32 (one thread).
        """
        index = (rows.view(-1, self.num_kv_heads),)
        self.keys.view(-1, self.head_dim).index_put_(index, key.to(self.keys.dtype))
        self.values.view(-1, self.head_dim).index_put_(index, value.to(self.values.dtype))

    def read(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values (``[N, kv_heads, head_dim]`` each) at pool ``rows`` (from :meth:`pool_rows`)."""
        shape = (-1, self.num_kv_heads, self.head_dim)
        keys = self.keys.view(-1, self.head_dim).index_select(0, rows).view(shape)
        return keys, self.values.view(-1, self.head_dim).index_select(0, rows).view(shape)


class PagedCache:
    """The executor's paged KV cache for a transformers model: one :class:`LayerCache` per attention layer.

    A layer's cache is allocated the first time the layer writes, with the
    number of key/value heads and the head size its keys have, so that any
    architecture's attention shape (multi-query, grouped, per-layer head sizes)
    fits without reading it from the config.

    Args:
        num_blocks: blocks in each layer's pool.
        block_size: tokens per block.
        dtype: the dtype of the cached keys and values.
        device: where the cache lives.
    """

    def __init__(self, num_blocks: int, block_size: int, *, dtype: torch.dtype, device: torch.device | str) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ModelportError(f"a KV cache needs at least one block of one token, got {num_blocks}x{block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.dtype = dtype
        self.device = torch.device(device)
        self.layers: dict[int, LayerCache] = {}
        self._layer_of: dict[int, int] = {}

    def layer_index(self, module: Any) -> int:
        """The cache layer of an attention module: its ``layer_idx``, else its order of first use."""
        index = getattr(module, "layer_idx", None)
        if isinstance(index, int):
            return index
        return self._layer_of.setdefault(id(module), len(self._layer_of) + 10_000)

    def layer(self, index: int, key: torch.Tensor, value: torch.Tensor) -> LayerCache:
        """The cache of layer ``index``, allocated for ``key``'s shape (``[N, kv_heads, head_dim]``) if new."""
        cache = self.layers.get(index)
        if cache is None:
            if value.shape[1:] != key.shape[1:]:
                raise ModelportError(
                    f"layer {index}: keys {tuple(key.shape[1:])} and values {tuple(value.shape[1:])} differ in shape; "
                    "the paged cache holds keys and values of one shape"
                )
            cache = LayerCache(
                self.num_blocks,
                self.block_size,
                int(key.shape[1]),
                int(key.shape[2]),
                dtype=self.dtype,
                device=self.device,
            )
            self.layers[index] = cache
        return cache

    @property
    def nbytes(self) -> int:
        """Memory the allocated layers take, in bytes."""
        return sum(cache.nbytes for cache in self.layers.values())


class _Decodes:
    """The single-token (decoding) sequences of a step, attended as sparse products over the cache pool.

    A decoding query reads every cached key of its sequence (within the
    layer's window). Gathering those keys and values into padded tensors for
    SDPA copies them, and SDPA then runs a tiny product per sequence and head.
    Here the keys a query reads are named by their rows in the pool instead
    (``[num_blocks * kv_heads * block_size, head_dim]``, :class:`LayerCache`): one row of a sparse
    pattern per sequence and query head, one entry per key it sees. The scores
    are ``torch.sparse.sampled_addmm`` of the queries and the pool's keys at
    those entries, the softmax runs over each row's entries, and the output is
    ``F.embedding_bag`` of the pool's values at the same rows, weighted by the
    probabilities: nothing is gathered, padded or masked, and sequences of any
    lengths share the three calls.
    """

    def __init__(
        self, members: torch.Tensor, starts: torch.Tensor, context_lens: torch.Tensor, table: torch.Tensor, bs: int
    ) -> None:
        self.rows = starts[members]  # the flat-batch row of each one's token
        self.size = int(members.numel())
        #: Every sequence of the step decodes (one token each, in order): their queries are the layer's, no gather.
        self.whole = self.size == int(starts.numel())
        self._totals = context_lens[members] + 1  # keys each reads, itself included
        self._table = table[members]
        self._block_size = bs
        self._patterns: dict[tuple[int | None, int, int, torch.dtype, int], _Pattern] = {}

    def pattern(self, window: int | None, heads: int, kv_heads: int, dtype: torch.dtype, pool_rows: int) -> _Pattern:
        """The sparse pattern of this step's decodes for one kind of layer (computed once per kind)."""
        key = (window, heads, kv_heads, dtype, pool_rows)
        found = self._patterns.get(key)
        if found is None:
            found = _Pattern(self, window, heads, kv_heads, dtype, pool_rows)
            self._patterns[key] = found
        return found


class _Pattern:
    """Which pool rows each (sequence, query head) of a :class:`_Decodes` reads, as a sparse CSR pattern."""

    def __init__(
        self, decodes: _Decodes, window: int | None, heads: int, kv_heads: int, dtype: torch.dtype, pool_rows: int
    ) -> None:
        import warnings

        totals, table, bs = decodes._totals, decodes._table, decodes._block_size
        device = table.device
        first = (totals - window).clamp(min=0) if window else torch.zeros_like(totals)
        counts = totals - first  # keys each sequence's query sees
        offsets = torch.arange(int(counts.max()), device=device)
        seen = offsets[None, :] < counts[:, None]  # [S, K]
        index = torch.where(seen, first[:, None] + offsets[None, :], 0)  # each key's index in its sequence
        blocks = table.gather(1, index // bs)  # [S, K]
        kv_of_head = torch.arange(heads, device=device) // (heads // kv_heads)
        # [S, H, K]: the pool rows of head-major blocks (LayerCache), (block * kv_heads + head) * block_size + offset
        pool_row = (blocks[:, None, :] * kv_heads + kv_of_head[None, :, None]) * bs + (index % bs)[:, None, :]
        every = seen[:, None, :].expand_as(pool_row).reshape(-1)
        #: Keys the longest row sees: the scores' softmax runs over rows of this width.
        self.width = int(offsets.numel())
        #: Where each entry sits in the ``[rows, width]`` scores, or ``None`` when every row sees ``width`` keys.
        self.padded_at = None if bool(every.all()) else every.nonzero().squeeze(1)
        entries = int(counts.sum()) * heads
        #: The softmax runs over the padded ``[rows, width]`` scores unless padding would be most of them
        #: (one long sequence among short ones): then over each row's entries, by segments.
        self.dense_softmax = self.padded_at is None or entries * 2 >= every.numel()
        #: Pool rows read, row by row of the pattern (sequence, then head, then key).
        self.columns = pool_row.reshape(-1) if self.padded_at is None else pool_row.reshape(-1)[self.padded_at]
        #: Entries in each row of the pattern.
        self.lengths = counts.repeat_interleave(heads)
        #: Where each row's entries start in :attr:`columns`.
        self.starts = torch.cumsum(self.lengths, 0) - self.lengths
        crow = torch.cat([self.starts, self.columns.new_tensor([self.columns.numel()])])
        with warnings.catch_warnings():  # "sparse CSR support is in beta state"
            warnings.simplefilter("ignore")
            self.csr = torch.sparse_csr_tensor(
                crow,
                self.columns,
                torch.zeros(self.columns.numel(), dtype=dtype, device=device),
                size=(decodes.size * heads, pool_rows),
                check_invariants=False,
            )


class _Group:
    """Sequences attended together in one call: their query rows, key slots and mask, padded."""

    def __init__(
        self,
        members: torch.Tensor,
        starts: torch.Tensor,
        query_lens: torch.Tensor,
        context_lens: torch.Tensor,
        table: torch.Tensor,
        block_size: int,
    ) -> None:
        device = table.device
        q_lens = query_lens[members]
        totals = context_lens[members] + q_lens
        self.size = int(members.numel())
        self.width = int(q_lens.max())
        self.length = int(totals.max())
        offsets = torch.arange(self.width, device=device)
        valid = offsets[None, :] < q_lens[:, None]  # [S, Q]
        rows = starts[members][:, None] + offsets[None, :]
        # Padding query rows read row 0 and sit at index 0, where key 0 is always visible (no empty softmax).
        self.rows = torch.where(valid, rows, 0).reshape(-1)
        flat_valid = valid.reshape(-1)
        self.take = flat_valid.nonzero().squeeze(1)  # rows of the padded result that are real tokens
        self.dest = self.rows[self.take]  # where those rows go in the flat batch
        self.query_index = torch.where(valid, context_lens[members][:, None] + offsets[None, :], 0)  # [S, Q]
        self.key_index = torch.arange(self.length, device=device)
        blocks = table[members][:, self.key_index // block_size]  # [S, L]
        self.key_slots = (blocks * block_size + self.key_index % block_size).reshape(-1)
        #: Nothing cached before this step: the keys and values are the step's own, at :attr:`rows`.
        self.fresh = bool((totals == q_lens).all())
        #: Fresh and of one length: no padding, the plain causal mask (``is_causal``) serves.
        self.causal = self.fresh and bool((q_lens == self.width).all())
        #: No padding and the rows in flat order from 0: the group's rows are the step's first ``size * width``.
        self.in_order = bool(valid.all()) and torch.equal(self.rows, torch.arange(self.rows.numel(), device=device))
        self._masks: dict[int | None, torch.Tensor] = {}
        self._key_rows: dict[int, torch.Tensor] = {}

    def key_rows(self, cache: LayerCache) -> torch.Tensor:
        """The pool rows of the members' keys in a layer like ``cache`` (computed once per number of heads)."""
        return cache.pool_rows_once(self._key_rows, self.key_slots)

    def mask(self, sliding_window: int | None) -> torch.Tensor:
        """``[S, 1, Q, L]``, true where a query may see a key: causal, within the window if one is given."""
        mask = self._masks.get(sliding_window)
        if mask is None:
            distance = self.query_index[:, :, None] - self.key_index[None, None, :]
            mask = distance >= 0
            if sliding_window is not None:
                mask &= distance < sliding_window
            mask = mask[:, None]
            self._masks[sliding_window] = mask
        return mask


class PagedStep:
    """What every layer of one forward needs to know about a :class:`SequenceBatch`, as tensors.

    Args:
        batch: the step's sequences.
        cache: the paged cache the layers read and write.
    """

    def __init__(self, batch: SequenceBatch, cache: PagedCache) -> None:
        device = cache.device
        self.cache = cache
        bs = cache.block_size
        query_lens = torch.as_tensor(list(batch.query_lens), dtype=torch.int64)
        context_lens = torch.as_tensor(list(batch.context_lens), dtype=torch.int64)
        count = len(batch.query_lens)
        if count == 0 or len(batch.context_lens) != count or len(batch.block_tables) != count:
            raise ModelportError(
                f"a SequenceBatch needs one context length and one block table per sequence, got {count} "
                f"query lengths, {len(batch.context_lens)} context lengths, {len(batch.block_tables)} block tables"
            )
        if int(query_lens.min()) < 1 or int(context_lens.min()) < 0:
            raise ModelportError(
                "every sequence of a SequenceBatch needs at least one new token and a context length of at least 0, "
                f"got query_lens {list(batch.query_lens)} and context_lens {list(batch.context_lens)}"
            )
        total = int(query_lens.sum())
        if total != int(batch.token_ids.numel()):
            raise ModelportError(f"query_lens sum to {total}, but the batch has {batch.token_ids.numel()} tokens")
        widths = [len(t) for t in batch.block_tables]
        padded = [list(t) + [0] * (max(widths) - len(t)) for t in batch.block_tables]
        needed = (context_lens + query_lens + bs - 1) // bs
        short = (needed > torch.as_tensor(widths)).nonzero()
        if short.numel():
            i = int(short[0])
            raise ModelportError(
                f"sequence {i}: a block table of {widths[i]} block(s) of {bs} cannot hold "
                f"{int(context_lens[i] + query_lens[i])} tokens"
            )
        table = torch.as_tensor(padded, dtype=torch.int64)
        if table.numel() and (int(table.min()) < 0 or int(table.max()) >= cache.num_blocks):
            raise ModelportError(f"block tables name blocks outside the cache's {cache.num_blocks}")
        table = table.to(device)
        query_lens, context_lens = query_lens.to(device), context_lens.to(device)
        ends = torch.cumsum(query_lens, 0)
        starts = ends - query_lens
        sequence = torch.repeat_interleave(torch.arange(count, device=device), query_lens)
        index = context_lens[sequence] + torch.arange(total, device=device) - starts[sequence]
        #: The cache slot of every new token.
        self.slots = table[sequence, index // bs] * bs + index % bs
        #: The flat rows whose logits a step returns: the last token of each sequence.
        self.last_rows = ends - 1
        decoding = query_lens == 1
        single, longer = decoding.nonzero().squeeze(1), (~decoding).nonzero().squeeze(1)
        #: The decoding sequences (one new token each), or ``None``.
        self.decodes = _Decodes(single, starts, context_lens, table, bs) if single.numel() else None
        #: Every token of the step is a decode (then the decodes' rows are the whole batch, in order).
        self.only_decodes = not longer.numel()
        self._layout = (starts, query_lens, context_lens, table, bs)
        self._decode_group: _Group | None = None
        #: The longer sequences (prefills and prefill chunks), attended together.
        self.groups = [_Group(longer, starts, query_lens, context_lens, table, bs)] if longer.numel() else []
        self.num_tokens = total
        self._new_rows: dict[int, torch.Tensor] = {}

    def new_rows(self, cache: LayerCache) -> torch.Tensor:
        """The pool rows the step's new keys and values go to in a layer like ``cache`` (once per number of heads)."""
        return cache.pool_rows_once(self._new_rows, self.slots)

    def decode_group(self) -> _Group:
        """The decoding sequences as one padded, masked group (where the sparse products cannot serve a layer)."""
        if self._decode_group is None:
            assert self.decodes is not None
            starts, query_lens, context_lens, table, bs = self._layout
            members = (query_lens == 1).nonzero().squeeze(1)
            self._decode_group = _Group(members, starts, query_lens, context_lens, table, bs)
        return self._decode_group

    @contextlib.contextmanager
    def active(self) -> Iterator[PagedStep]:
        """Make this the step :func:`paged_attention` serves while the block runs."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)


def paged_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention over the paged cache, with the signature of transformers' attention functions.

    ``query`` is ``[1, heads, T, head_dim]``, ``key`` and ``value``
    ``[1, kv_heads, T, head_dim]`` for the flat batch of the active step. Returns
    ``([1, T, heads, head_dim], None)``. ``scaling``, ``softcap`` (Gemma 2) and
    ``sliding_window`` are honoured as transformers' own functions honour them.
    Outside a step, it is transformers' SDPA attention (or eager attention for a
    ``softcap``).
    """
    step = _CURRENT.get()
    if step is None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        name = "eager" if softcap is not None else "sdpa"
        fallback = ALL_ATTENTION_FUNCTIONS.get(name) if name != "eager" else _eager_of(module)
        extra = {"softcap": softcap} if softcap is not None else {}
        if sliding_window is not None:
            extra["sliding_window"] = sliding_window
        return fallback(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **extra, **kwargs)
    if query.shape[0] != 1 or query.shape[2] != step.num_tokens:
        raise ModelportError(
            f"paged attention expects the step's {step.num_tokens} tokens in one row, got {tuple(query.shape)}"
        )
    cache = step.cache
    layer = cache.layer_index(module)
    q = query[0].transpose(0, 1)  # [T, H, D]
    k = key[0].transpose(0, 1)
    v = value[0].transpose(0, 1)
    layer_cache = cache.layer(layer, k, v)
    layer_cache.write(step.new_rows(layer_cache), k, v)
    scale = scaling if scaling is not None else q.shape[2] ** -0.5
    window = int(sliding_window) if sliding_window else None
    cap = float(softcap) if softcap is not None else None
    out: torch.Tensor | None = None
    decodes = step.decodes
    if decodes is not None and sparse_decode_works(layer_cache.keys.dtype, q.device):
        attended = _attend_decodes(decodes, q, layer_cache, scale, cap, window)
        if step.only_decodes:
            return attended[None], None
        out = q.new_empty(q.shape[0], q.shape[1], attended.shape[2])
        out.index_copy_(0, decodes.rows, attended)
        groups = step.groups
    else:
        groups = ([step.decode_group()] if decodes is not None else []) + step.groups
    if out is None and len(groups) == 1 and groups[0].in_order and groups[0].rows.numel() == q.shape[0]:
        # the whole step is one group in flat order (a batch of fresh prompts): no gathers, no scatter
        return _attend_group(groups[0], q, k, v, layer_cache, scale, cap, window, whole=True)[1][None], None
    for group in groups:  # at most two: the decoding sequences, then the others
        dest, attended = _attend_group(group, q, k, v, layer_cache, scale, cap, window)
        if out is None:
            out = q.new_empty(q.shape[0], q.shape[1], attended.shape[2])
        out.index_copy_(0, dest, attended)
    assert out is not None
    return out[None], None


def _attend_decodes(
    decodes: _Decodes, q: torch.Tensor, cache: LayerCache, scale: float, softcap: float | None, window: int | None
) -> torch.Tensor:
    """``[S, H, Dv]``: the decoding queries attended over the pool rows their pattern names (:class:`_Decodes`)."""
    heads, dim = q.shape[1], q.shape[2]
    keys = cache.keys.view(-1, dim)  # [num_blocks * kv_heads * block_size, head_dim]
    values = cache.values.view(-1, cache.values.shape[-1])
    pattern = decodes.pattern(window, heads, cache.num_kv_heads, keys.dtype, keys.shape[0])
    queries = q if decodes.whole else q.index_select(0, decodes.rows)
    queries = queries.reshape(-1, dim).to(keys.dtype)
    scores = torch.sparse.sampled_addmm(pattern.csr, queries, keys.t(), beta=0.0, alpha=scale).values()
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    # The softmax of each row over its entries: one dense softmax over [rows, width], padded with -inf where
    # the rows' lengths differ (segment reductions over the flat entries took several times longer), unless
    # the padding would be most of it.
    padded_at = pattern.padded_at
    if padded_at is None:
        weights = torch.softmax(scores.view(-1, pattern.width), dim=-1).view(-1)
    elif pattern.dense_softmax:
        padded = scores.new_full((decodes.size * heads * pattern.width,), float("-inf"))
        padded.scatter_(0, padded_at, scores)
        weights = torch.softmax(padded.view(-1, pattern.width), dim=-1).view(-1).index_select(0, padded_at)
    else:
        lengths = pattern.lengths
        top = torch.segment_reduce(scores, "max", lengths=lengths)
        weights = (scores - top.repeat_interleave(lengths, output_size=scores.numel())).exp_()
        weights /= torch.segment_reduce(weights, "sum", lengths=lengths).repeat_interleave(
            lengths, output_size=scores.numel()
        )
    attended = F.embedding_bag(pattern.columns, values, pattern.starts, mode="sum", per_sample_weights=weights)
    return attended.view(decodes.size, heads, -1).to(q.dtype)


def _attend_group(
    group: _Group,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache: LayerCache,
    scale: float,
    softcap: float | None,
    window: int | None,
    *,
    whole: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded group attended in one call: ``(rows, [N, H, Dv])``.

    Its keys and values are gathered from the cache, or for fresh prefills
    (nothing cached before) taken from the step's own ``k`` and ``v``. With
    ``whole``, the group is the step's every row in flat order (``in_order``):
    the queries, and a fresh group's keys and values, are views, not gathers.
    """
    heads, head_dim = q.shape[1], q.shape[2]
    kv_heads = cache.num_kv_heads
    if group.fresh:
        keys, values = (k, v) if whole else (k.index_select(0, group.rows), v.index_select(0, group.rows))
    else:
        keys, values = cache.read(group.key_rows(cache))
    keys = keys.reshape(group.size, group.length, kv_heads, head_dim).transpose(1, 2).to(q.dtype)
    values = values.reshape(group.size, group.length, kv_heads, -1).transpose(1, 2).to(q.dtype)
    queries = q if whole else q.index_select(0, group.rows)
    queries = queries.reshape(group.size, group.width, heads, head_dim).transpose(1, 2)
    if softcap is None and group.causal and (window is None or window >= group.width):
        result = F.scaled_dot_product_attention(
            queries, keys, values, is_causal=True, scale=scale, enable_gqa=heads != kv_heads
        )
    elif softcap is None:
        result = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=group.mask(window), scale=scale, enable_gqa=heads != kv_heads
        )
    else:
        assert softcap is not None
        result = _softcapped(queries, keys, values, group.mask(window), scale, softcap)
    result = result.transpose(1, 2).reshape(group.size * group.width, heads, -1)
    return group.dest, result if whole else result.index_select(0, group.take)


@functools.cache
def sparse_decode_works(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether decoding queries are attended through sparse products for a cache of ``dtype`` on ``device``.

    Float32 on the CPU only (lower precisions keep SDPA, which accumulates in
    float32; other devices keep the path measured there), and only where the
    three operators exist and agree with dense attention on a small probe;
    anywhere else the decodes are gathered and padded like the longer sequences.
    """
    if dtype != torch.float32 or device.type != "cpu":
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        pool = LayerCache(4, 2, 2, 8, dtype=dtype, device=device)
        for tensor in (pool.keys, pool.values):
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
        table = torch.tensor([[2, 0, 3], [1, 0, 0]], device=device)
        decodes = _Decodes(
            torch.arange(2, device=device),
            torch.arange(2, device=device),
            torch.tensor([4, 1], device=device),
            table,
            2,
        )
        q = torch.randn(2, 4, 8, generator=generator).to(device)
        got = _attend_decodes(decodes, q, pool, 0.5, None, None)
        slots = [[4, 5, 0, 1, 6], [2, 3]]
        for i, sequence in enumerate(slots):
            keys, values = pool.read(pool.pool_rows(torch.tensor(sequence, device=device)))
            keys, values = (t.repeat_interleave(2, dim=1).transpose(0, 1) for t in (keys, values))
            want = torch.softmax(q[i][:, None] @ keys.transpose(1, 2) * 0.5, -1) @ values
            if not torch.allclose(got[i], want[:, 0], atol=1e-5):
                return False
    except Exception:  # an operator missing on this device or build: the gathering path serves
        return False
    return True


def _softcapped(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float, softcap: float
) -> torch.Tensor:
    """Attention with the scores capped by ``softcap * tanh(score / softcap)`` (Gemma 2), softmax in float32."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value)


def _eager_of(module: Any) -> Any:
    """The model's own eager attention function (the one transformers uses for ``"eager"``)."""
    import sys

    found = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if found is None:
        raise ModelportError(f"{type(module).__name__}: no eager attention function for a soft-capped forward")
    return found
