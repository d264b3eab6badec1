"""The model protocol shared by native and backend implementations.

A model class is named by a ``"module:Class"`` string in the architecture
registry. The pipeline and the executors use it only through this protocol:

* ``from_config(hf_config, dtype=..., device=...)`` builds it on the meta
  device, so that no memory is spent twice;
* ``load_weights(weights)`` consumes ``(name, tensor)`` pairs (mapping names as
  its format needs), gives every parameter its memory on ``device`` (adopting a
  tensor already in the right dtype and device, copying the rest, initialising
  what no weight filled) and returns a :class:`~modelport.pipeline.WeightReport`;
* ``new_kv_cache(num_blocks, block_size)`` allocates the cache that
  ``forward`` reads and writes;
* ``forward(batch, kv_cache)`` runs one step for a batch of sequences of
  different lengths and returns logits;
* optionally, ``unsupported_reason(hf_config)`` (a classmethod) returns why the
  class declines a config of its architecture (a RoPE type or a feature it
  lacks) or ``None``; the architecture step passes a declining class over, so
  that with ``model_impl="auto"`` another implementation (the Transformers
  backend) serves the config and the trace says why, while an explicit
  ``model_impl`` fails with the reason.

The batch is flat: the new tokens of every sequence, concatenated, with their
positions; ``query_lens`` says how many belong to each sequence and
``block_tables`` which cache blocks hold each sequence's keys and values.
A prefill is a step whose ``context_lens`` are 0; a decode step has
``query_lens`` of 1. Both mix freely in one batch (continuous batching).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from modelport.pipeline import WeightReport


@dataclass(frozen=True)
class SequenceBatch:
    """One forward step over several sequences.

    Attributes:
        token_ids: the new tokens of all sequences, concatenated (``[T]``, int64).
        positions: the position of each of those tokens in its sequence (``[T]``, int64).
        query_lens: how many of the new tokens belong to each sequence (sums to ``T``).
        context_lens: tokens of each sequence already in the KV cache before this step.
        block_tables: for each sequence, the cache blocks that hold its tokens, in order;
            they must cover ``context_lens[i] + query_lens[i]`` tokens.
        all_logits: return logits for every new token (``[T, vocab]``) instead of only
            the last one of each sequence (``[len(query_lens), vocab]``); for scoring
            prompts and for parity tests.
    """

    token_ids: torch.Tensor
    positions: torch.Tensor
    query_lens: Sequence[int]
    context_lens: Sequence[int]
    block_tables: Sequence[Sequence[int]]
    all_logits: bool = False

    @property
    def num_sequences(self) -> int:
        """How many sequences the batch holds."""
        return len(self.query_lens)


@runtime_checkable
class CausalLM(Protocol):
    """What the pipeline and executors require of a model implementation."""

    @classmethod
    def from_config(cls, hf_config: Any, *, dtype: str, device: str) -> CausalLM:
        """Build the model for ``hf_config`` in ``dtype`` on ``device`` (meta device first)."""
        ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> WeightReport:
        """Fill the parameters from ``(name, tensor)`` pairs; report what was missing or unexpected."""
        ...

    def new_kv_cache(self, num_blocks: int, block_size: int) -> Any:
        """Allocate a KV cache of ``num_blocks`` blocks of ``block_size`` tokens each."""
        ...

    def forward(self, batch: SequenceBatch, kv_cache: Any) -> torch.Tensor:
        """Run one step; write the new tokens' keys and values into ``kv_cache``; return logits."""
        ...
