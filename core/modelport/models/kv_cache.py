"""A paged KV cache: keys and values of every layer in fixed-size blocks.

Each layer holds a key tensor and a value tensor of shape
``[num_blocks, block_size, num_kv_heads, head_dim]``. A sequence owns a list
of blocks (its block table, kept by the executor); the token at index ``i`` of
the sequence lives in block ``table[i // block_size]`` at offset
``i % block_size``, its *slot* ``table[i // block_size] * block_size + i % block_size``.
Sequences of any length share one pool of blocks without copying or padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class PagedKVCache:
    """Per-layer key and value blocks, written and read by slot.

    Args:
        num_layers: decoder layers (one key and one value tensor each).
        num_blocks: blocks in the pool.
        block_size: tokens per block.
        num_kv_heads: key/value heads per layer.
        head_dim: size of each head.
        dtype: the model's dtype.
        device: the model's device.
    """

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"a KV cache needs at least one block of one token, got {num_blocks}x{block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        # Zeroed, so that a slot never written holds no NaN that a masked-out read could spread.
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @property
    def num_layers(self) -> int:
        """How many layers the cache holds."""
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        """Memory the cache takes, in bytes."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def slots(self, block_table: Sequence[int], start: int, end: int) -> torch.Tensor:
        """The slots of a sequence's tokens ``start`` to ``end - 1`` (``[end - start]``, int64).

        Raises:
            ValueError: the block table does not cover ``end`` tokens.
        """
        needed = -(-end // self.block_size)
        if len(block_table) < needed:
            raise ValueError(
                f"block table of {len(block_table)} block(s) of {self.block_size} cannot hold {end} tokens"
            )
        device = self.keys[0].device if self.keys else None
        index = torch.arange(start, end, dtype=torch.int64, device=device)
        table = torch.as_tensor(list(block_table[:needed]), dtype=torch.int64, device=device)
        return table[index // self.block_size] * self.block_size + index % self.block_size

    def write(self, layer: int, slots: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store ``key`` and ``value`` (``[N, num_kv_heads, head_dim]``) at ``slots`` of ``layer``."""
        flat = (-1, self.num_kv_heads, self.head_dim)
        self.keys[layer].view(flat).index_copy_(0, slots, key.to(self.keys[layer].dtype))
        self.values[layer].view(flat).index_copy_(0, slots, value.to(self.values[layer].dtype))

    def read_blocks(self, layer: int, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of whole ``blocks`` of ``layer`` (``[len(blocks), block_size, num_kv_heads, head_dim]``).

        One gathered row per block instead of one per token: what attention reads a sequence's keys with.
        """
        return self.keys[layer].index_select(0, blocks), self.values[layer].index_select(0, blocks)

    def read(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values (``[N, num_kv_heads, head_dim]`` each) stored at ``slots`` of ``layer``."""
        flat = (-1, self.num_kv_heads, self.head_dim)
        return (
            self.keys[layer].view(flat).index_select(0, slots),
            self.values[layer].view(flat).index_select(0, slots),
        )
