"""CUDA graphs for decode steps: capture per padded batch size, static input buffers, replay.

A decode step of a small model is mostly kernel launches: hundreds of small
kernels whose launch costs more than their work. A CUDA graph records the
launches of one step once and replays them with one call. A graph replays
on the very memory it was captured with, so the step's inputs are copied into
static buffers first and its logits read from the graph's own output tensor,
and a graph serves one shape only: as in vLLM, a batch of ``n`` sequences runs
in the graph of the smallest capture size ``>= n`` (:func:`capture_sizes`),
its extra rows padding that write to a block no sequence owns and are dropped.

vLLM's paged attention kernels read each sequence's own length from a tensor,
so its decode graphs depend on the batch size alone. Here attention reads whole
blocks gathered by the block table (:meth:`StaticDecodeLayout.attend`, which
core's :func:`~modelport.models.attention.paged_attention` hands the work to),
whose shape is the number of blocks read; so a graph is captured per (padded batch size,
block bucket), the bucket being the longest sequence's blocks rounded up to a
power of two (:func:`block_bucket`), and shorter sequences masked. Graphs are
captured on first use of their shape and share one memory pool; sequences
longer than ``max_capture_len`` tokens, and steps holding a prefill, run
eagerly (``model.forward``).

The bookkeeping (padding, copying in and out, the static layout) does not need
a GPU: :class:`EagerGraphs` stands in for :class:`CUDAGraphs` and calls the
step where a graph would replay it, so the same code runs on CPU tensors in
the tests.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from modelport.models.attention import AttentionGroup
from modelport.models.protocol import SequenceBatch

if TYPE_CHECKING:
    import torch

#: Largest decode batch captured (vLLM's default ceiling).
MAX_CAPTURE_SIZE = 512
#: Fewest blocks a graph reads: short sequences share one bucket.
MIN_BUCKET_BLOCKS = 16
#: Sequences longer than this many tokens decode eagerly (vLLM's former ``max_seq_len_to_capture``).
MAX_CAPTURE_LEN = 8192


def capture_sizes(max_num_seqs: int) -> tuple[int, ...]:
    """The batch sizes decode graphs are captured for, vLLM's list: 1, 2, 4, then every 8 to 256, every 16 above.

    The list stops at the first size that holds ``max_num_seqs`` sequences
    (no step runs more), and at :data:`MAX_CAPTURE_SIZE`.
    """
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be positive, got {max_num_seqs}")
    every = [1, 2, 4, *range(8, 256, 8), *range(256, MAX_CAPTURE_SIZE + 1, 16)]
    kept = [size for size in every if size < max_num_seqs]
    kept.extend(size for size in every[len(kept) :][:1])
    return tuple(kept)


def padded_size(count: int, sizes: Sequence[int]) -> int | None:
    """The smallest of ``sizes`` (ascending) that holds ``count`` sequences; ``None`` above the largest."""
    at = bisect.bisect_left(sizes, count)
    return sizes[at] if at < len(sizes) else None


def block_bucket(blocks: int, max_blocks: int) -> int:
    """The blocks a graph reads for sequences of up to ``blocks`` blocks: a power of two, at most ``max_blocks``."""
    bucket = max(MIN_BUCKET_BLOCKS, 1 << max(0, math.ceil(math.log2(max(blocks, 1)))))
    return min(bucket, max_blocks)


class GraphCapture(Protocol):
    """Turns a step function into a replay function (a CUDA graph, or the function itself)."""

    def capture(self, step: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """Record ``step`` (which reads and writes static buffers only); return what replays it."""
        ...


class EagerGraphs:
    """Stands in for CUDA graphs: the step runs again at each "replay" (for CPU tensors and tests).

    Attributes:
        captured: how many steps were "captured" (one per shape).
    """

    def __init__(self) -> None:
        self.captured = 0

    def capture(self, step: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """Return ``step`` itself."""
        self.captured += 1
        return step


class CUDAGraphs:
    """Captures steps as CUDA graphs (``torch.cuda.CUDAGraph``) sharing one memory pool.

    Each capture is preceded by one warm-up run on a side stream (lazy
    initialisation inside kernels must not happen during capture), as
    PyTorch's documentation advises. The warm-up writes the step's keys and
    values into the cache; the replay that follows writes the same ones again.

    Args:
        device: the CUDA device.
    """

    def __init__(self, device: Any) -> None:
        self.device = device
        self.pool: Any = None
        self.captured = 0

    def capture(self, step: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """Warm ``step`` up, capture it, return its replay (which returns the graph's output tensor)."""
        import torch

        side = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = step()
        if self.pool is None:
            self.pool = graph.pool()
        self.captured += 1

        def replay() -> torch.Tensor:
            graph.replay()
            return output

        return replay


def graph_support(model: Any) -> str | None:
    """Why decode graphs cannot run ``model``, or ``None`` when they can.

    They drive the native Llama family's own modules (embedding, decoder
    layers, norm, head) with a static layout, so they need that structure, a
    dense MLP (a mixture of experts routes tokens on the host) and a RoPE that
    does not depend on the sequence's length (``dynamic`` and ``longrope`` read
    it on the host).
    """
    from modelport.models.llama import GatedMLP, LlamaForCausalLM

    if not isinstance(model, LlamaForCausalLM) or type(model).forward is not LlamaForCausalLM.forward:
        return f"{type(model).__name__} is not a native Llama-family model (graphs drive that structure only)"
    if not all(isinstance(layer.mlp, GatedMLP) for layer in model.model.layers):
        return f"{type(model).__name__} routes tokens to experts on the host"
    if model._get_rotary().depends_on_length:
        return "its RoPE type depends on each sequence's length, read on the host"
    return None


class StaticDecodeLayout:
    """A decode step's layout for :func:`~modelport.models.attention.paged_attention`, as static tensors.

    ``size`` single-token sequences, each reading its row of ``tables``
    (``[size, blocks]``) whole; the mask admits key ``k`` of a sequence when
    ``k < seq_len`` (and, under a window ``w``, ``k > seq_len - 1 - w``).
    Everything is computed on the device from the buffers, so a graph can
    record it. :meth:`attend` is the attention itself (core's
    ``paged_attention`` hands it the layer's work); :meth:`groups` describes
    the same step in the form of core's layouts, for its grouped SDPA path.
    """

    def __init__(
        self, cache: Any, new_slots: torch.Tensor, tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int
    ) -> None:
        self.cache = cache
        self.new_slots = new_slots
        self.tables = tables
        self.seq_lens = seq_lens
        self.block_size = block_size
        self._masks: dict[int | None, torch.Tensor] = {}

    def mask(self, window: int | None) -> torch.Tensor:
        """``[size, blocks * block_size]``: true where a sequence's query may see the key at that index."""
        found = self._masks.get(window)
        if found is None:
            import torch

            blocks = self.tables.shape[1]
            key = torch.arange(blocks * self.block_size, device=self.tables.device)[None, :]
            query = self.seq_lens[:, None] - 1
            found = key <= query
            if window is not None:
                found = found & (key > query - window)
            self._masks[window] = found
        return found

    def groups(self, window: int | None) -> tuple[AttentionGroup, ...]:
        """The step as core's one group of single-token sequences, its mask for ``window``."""
        size = self.tables.shape[0]
        return (AttentionGroup(slice(0, size), size, 1, self.tables, self.mask(window).view(size, 1, 1, -1)),)

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        *,
        layer: int,
        window: int | None,
        scale: float,
    ) -> torch.Tensor:
        """Write the step's keys and values into the cache, then attend each query to its sequence's keys.

        Grouped-query heads share their key/value head by broadcasting (query
        head ``h`` reads key/value head ``h // (heads // kv_heads)``, as
        transformers' and SDPA's grouping): the keys are not repeated per query
        head, as SDPA's ``enable_gqa`` fallback does, so a step reads each
        cached key once. Scores and softmax are in float32.

        Args:
            query: ``[size, num_heads, head_dim]``, rotated.
            key: ``[size, num_kv_heads, head_dim]``, rotated.
            value: ``[size, num_kv_heads, head_dim]``.
            layer: the layer's index in the cache.
            window: the layer's sliding window, or ``None``.
            scale: the softmax scale.

        Returns:
            ``[size, num_heads, head_dim]`` in ``query``'s dtype.
        """
        import torch

        self.cache.write(layer, self.new_slots, key, value)
        size, heads, dim = query.shape
        kv_heads = key.shape[1]
        keys, values = self.cache.read_blocks(layer, self.tables.reshape(-1))
        keys = keys.view(size, -1, kv_heads, dim).transpose(1, 2).float()  # [size, kv_heads, keys, dim]
        values = values.view(size, -1, kv_heads, dim).transpose(1, 2).float()
        grouped = query.view(size, kv_heads, heads // kv_heads, dim).float()  # [size, kv_heads, group, dim]
        scores = torch.matmul(grouped, keys.transpose(-1, -2)) * scale  # [size, kv_heads, group, keys]
        scores = scores.masked_fill(~self.mask(window)[:, None, None, :], float("-inf"))
        attended = torch.matmul(torch.softmax(scores, dim=-1), values)  # [size, kv_heads, group, dim]
        return attended.reshape(size, heads, dim).to(query.dtype)


def decode_forward(model: Any, tokens: torch.Tensor, positions: torch.Tensor, layout: StaticDecodeLayout) -> Any:
    """One decode step of a native Llama-family ``model`` through its own modules, under a static ``layout``."""
    from modelport.models.linear import linear

    hidden = model.model.embed_tokens(tokens)
    spans = [(row, row + 1) for row in range(tokens.shape[0])]
    rotation = model._get_rotary().rotation(positions, spans, hidden.dtype)
    for layer in model.model.layers:
        hidden = layer(hidden, rotation, layout)
    hidden = model.model.norm(hidden)
    if model.lm_head is None:
        return linear(hidden, model.model.embed_tokens.weight)
    return model.lm_head(hidden)


class DecodeGraphRunner:
    """Runs decode steps through graphs: pads the batch, copies it into static buffers, replays, copies out.

    Args:
        model: a native Llama-family model (see :func:`graph_support`).
        kv_cache: the executor's cache.
        sizes: the capture sizes, ascending (:func:`capture_sizes`).
        max_blocks: blocks of the longest sequence a graph serves.
        pad_block: a cache block no sequence owns, where padding rows write.
        graphs: :class:`CUDAGraphs`, or :class:`EagerGraphs` for CPU tensors.
    """

    def __init__(
        self, model: Any, kv_cache: Any, *, sizes: Sequence[int], max_blocks: int, pad_block: int, graphs: GraphCapture
    ) -> None:
        import torch

        self.model = model
        self.cache = kv_cache
        self.sizes = tuple(sizes)
        self.max_blocks = max_blocks
        self.pad_block = pad_block
        self.graphs = graphs
        self.block_size = int(kv_cache.block_size)
        device = model.device
        largest = self.sizes[-1]
        self.tokens = torch.zeros(largest, dtype=torch.long, device=device)
        self.positions = torch.zeros(largest, dtype=torch.long, device=device)
        self.slots = torch.zeros(largest, dtype=torch.long, device=device)
        self.seq_lens = torch.ones(largest, dtype=torch.long, device=device)
        self.tables = torch.full((largest, max_blocks), pad_block, dtype=torch.long, device=device)
        self._replays: dict[tuple[int, int], Callable[[], torch.Tensor]] = {}
        #: Steps run through a graph, by (padded size, block bucket).
        self.replayed: dict[tuple[int, int], int] = {}

    def shape_for(self, batch: SequenceBatch) -> tuple[int, int] | None:
        """The graph ``(padded size, block bucket)`` that runs ``batch``, or ``None`` when none does.

        ``None`` for a batch holding a prefill (a sequence with more than one new
        token), more sequences than the largest capture size, or a sequence longer
        than ``max_blocks`` blocks.
        """
        if not batch.num_sequences or any(int(q) != 1 for q in batch.query_lens):
            return None
        size = padded_size(batch.num_sequences, self.sizes)
        longest = max(int(c) for c in batch.context_lens) + 1
        blocks = -(-longest // self.block_size)
        if size is None or blocks > self.max_blocks:
            return None
        return size, block_bucket(blocks, self.max_blocks)

    def host_inputs(self, batch: SequenceBatch, size: int, blocks: int) -> dict[str, torch.Tensor]:
        """The padded inputs of ``batch`` on the host: what is copied into the static buffers.

        Rows past the batch's sequences are padding: token 0 at position 0, one
        key long, writing to and reading from the pad block.
        """
        import torch

        count, bs, pad = batch.num_sequences, self.block_size, self.pad_block
        tokens = torch.zeros(size, dtype=torch.long)
        positions = torch.zeros(size, dtype=torch.long)
        seq_lens = torch.ones(size, dtype=torch.long)
        tokens[:count] = batch.token_ids.to("cpu", torch.long)
        positions[:count] = batch.positions.to("cpu", torch.long)
        context = torch.as_tensor([int(c) for c in batch.context_lens], dtype=torch.long)
        seq_lens[:count] = context + 1
        # One tensor from padded lists: a slice assignment per row costs ten times more for 256 rows.
        rows = [list(table[:blocks]) for table in batch.block_tables]
        padded = [row + [pad] * (blocks - len(row)) for row in rows] + [[pad] * blocks] * (size - count)
        tables = torch.tensor(padded, dtype=torch.long)
        slots = torch.full((size,), pad * bs, dtype=torch.long)
        slots[:count] = tables[torch.arange(count), context // bs] * bs + context % bs
        return {"tokens": tokens, "positions": positions, "seq_lens": seq_lens, "tables": tables, "slots": slots}

    def run(self, batch: SequenceBatch) -> torch.Tensor:
        """The logits of ``batch`` (``[num_sequences, vocab]``), from its graph; ``ValueError`` if none serves it."""
        shape = self.shape_for(batch)
        if shape is None:
            raise ValueError("no decode graph serves this batch (a prefill, too many sequences, or too long)")
        size, blocks = shape
        host = self.host_inputs(batch, size, blocks)
        self.tokens[:size].copy_(host["tokens"])
        self.positions[:size].copy_(host["positions"])
        self.seq_lens[:size].copy_(host["seq_lens"])
        self.slots[:size].copy_(host["slots"])
        self.tables[:size, :blocks].copy_(host["tables"])
        replay = self._replays.get(shape)
        if replay is None:
            replay = self._replays[shape] = self.graphs.capture(self._step(size, blocks))
        self.replayed[shape] = self.replayed.get(shape, 0) + 1
        logits: torch.Tensor = replay()
        return logits[: batch.num_sequences].clone()  # the graph's output is overwritten by its next replay

    def _step(self, size: int, blocks: int) -> Callable[[], torch.Tensor]:
        """The step of one graph shape: reads the static buffers only."""

        def step() -> torch.Tensor:
            layout = StaticDecodeLayout(
                self.cache,
                self.slots[:size],
                self.tables[:size, :blocks].contiguous(),
                self.seq_lens[:size],
                self.block_size,
            )
            logits: torch.Tensor = decode_forward(self.model, self.tokens[:size], self.positions[:size], layout)
            return logits

        return step
