"""Tensor-parallel building blocks: sharded linear layers, the vocabulary-parallel embedding, collectives.

Megatron-LM's split, as vLLM's ``linear.py`` and ``vocab_parallel_embedding.py`` do it:

* a **column-parallel** linear layer (q, k, v, gate and up projections) holds a slice of
  the output rows on each rank; its output is the rank's share of the heads or of the MLP's
  intermediate width, and needs no communication;
* a **row-parallel** linear layer (the attention's o_proj, the MLP's down_proj) holds the
  matching slice of the input columns; each rank's product is a partial sum, added up by one
  all-reduce, and the bias (whole on every rank) is added once, after it;
* the **vocabulary-parallel** embedding holds a contiguous range of the vocabulary's rows;
  a token outside the range looks up zeros and one all-reduce assembles the embeddings; the
  LM head (or the tied embedding matrix) gives each rank the logits of its range, and one
  all-gather puts the whole row on every rank.

A layer reads its rank and group from the :class:`~modelport.distributed.state.ParallelState`
it was built with. With one rank no collective runs. Shards are contiguous and equal, so each
sharded size must divide by the number of ranks
(:func:`modelport.distributed.checks.check_tensor_parallel` says so before anything is built).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelport.distributed.state import ParallelState
from modelport.errors import WeightsCorruptError
from modelport.models.linear import Linear, linear
from modelport.weight_checks import current_weight_file


def all_reduce(x: torch.Tensor, state: ParallelState) -> torch.Tensor:
    """Sum ``x`` over the ranks of ``state``, in place; ``x`` itself with one rank."""
    if state.world_size == 1:
        return x
    state.group.allreduce([x]).wait()
    return x


def all_gather_last(x: torch.Tensor, state: ParallelState) -> torch.Tensor:
    """Concatenate every rank's ``x`` along the last dimension, in rank order; ``x`` itself with one rank."""
    if state.world_size == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(state.world_size)]
    state.group.allgather([parts], [x]).wait()
    return torch.cat(parts, dim=-1)


class RowParallelLinear(Linear):
    """A linear layer holding a slice of the input columns; its outputs are summed over the ranks.

    ``in_features`` is the rank's share; the bias is whole and added once, after the all-reduce.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool, *, dtype: torch.dtype, state: ParallelState
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, dtype=dtype)
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``all_reduce(x @ weight_shard.T) + bias``."""
        out = all_reduce(linear(x, self.weight), self.state)
        return out if self.bias is None else out + self.bias


def row_parallel(in_features: int, out_features: int, bias: bool, *, dtype: torch.dtype, state: ParallelState) -> Any:
    """A plain :class:`~modelport.models.linear.Linear` with one rank, else a :class:`RowParallelLinear`."""
    if state.world_size == 1:
        return Linear(in_features, out_features, bias=bias, dtype=dtype)
    return RowParallelLinear(in_features // state.world_size, out_features, bias, dtype=dtype, state=state)


class VocabParallelEmbedding(nn.Embedding):
    """An embedding holding rows ``rank * V/N`` to ``(rank + 1) * V/N - 1`` of the vocabulary.

    Tokens of other ranks' ranges look up zeros here; one all-reduce assembles every token's row.
    """

    def __init__(self, vocab_size: int, hidden_size: int, *, dtype: torch.dtype, state: ParallelState) -> None:
        rows = vocab_size // state.world_size
        # Given its (uninitialised) weight: nn.Embedding's own initialisation is wasted on values a load replaces.
        super().__init__(rows, hidden_size, _weight=torch.empty(rows, hidden_size, dtype=dtype))
        self.start, self.rows, self.state = state.rank * rows, rows, state

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The embeddings of ``token_ids`` (``[T]`` -> ``[T, hidden]``), whole on every rank."""
        local = token_ids - self.start
        outside = (local < 0) | (local >= self.rows)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return all_reduce(out.masked_fill(outside.unsqueeze(-1), 0), self.state)


def embedding(vocab_size: int, hidden_size: int, *, dtype: torch.dtype, state: ParallelState) -> nn.Module:
    """``nn.Embedding`` with one rank, else a :class:`VocabParallelEmbedding` (the same parameter name, ``weight``)."""
    if state.world_size == 1:
        return nn.Embedding(vocab_size, hidden_size, dtype=dtype)
    return VocabParallelEmbedding(vocab_size, hidden_size, dtype=dtype, state=state)


# --- reading a rank's slice of a checkpoint tensor -------------------------------------------


def full_shape(tensor: Any) -> tuple[int, ...]:
    """The shape of a tensor, or of a lazy safetensors slice (``get_shape()``) without reading it."""
    get_shape = getattr(tensor, "get_shape", None)
    return tuple(int(n) for n in (get_shape() if callable(get_shape) else tensor.shape))


def read_whole(tensor: Any) -> torch.Tensor:
    """A torch tensor from ``tensor``, reading a lazy safetensors slice whole."""
    if isinstance(tensor, torch.Tensor):
        return tensor
    out: torch.Tensor = tensor[...]
    return out


def read_shard(
    name: str, tensor: Any, dim: int, local: int, state: ParallelState, *, halves: bool = False
) -> torch.Tensor:
    """Rank ``state.rank``'s slice of checkpoint tensor ``name`` along ``dim``, reading only that slice.

    ``local`` is the size of the slice along ``dim``. ``halves``: the tensor is two
    tensors stacked along ``dim`` (a fused gate and up projection), each sliced alike and
    the two slices stacked again. A lazy safetensors slice (``get_slice``) reads only the
    rows asked for; a torch tensor is narrowed (a view; the model copies or adopts it).

    Raises:
        WeightsCorruptError: the tensor's size along ``dim`` is not ``local`` times the number of ranks.
    """
    shape = full_shape(tensor)
    parts = 2 if halves else 1
    if dim >= len(shape) or shape[dim] != local * state.world_size * parts:
        expected = local * state.world_size * parts
        raise WeightsCorruptError(
            current_weight_file(),
            f"tensor {name!r} of shape {list(shape)} cannot be split for tensor parallelism: "
            f"expected {expected} along dimension {dim}; the checkpoint does not belong to this config",
        )
    half = shape[dim] // parts
    pieces = []
    for part in range(parts):
        start = part * half + state.rank * local
        if isinstance(tensor, torch.Tensor):
            pieces.append(tensor.narrow(dim, start, local))
        else:
            index = tuple(slice(start, start + local) if d == dim else slice(None) for d in range(len(shape)))
            pieces.append(tensor[index])
    return pieces[0] if parts == 1 else torch.cat(pieces, dim=dim)
