"""Native MixtralForCausalLM: the Mistral decoder with a sparse mixture-of-experts MLP.

Each token is routed to ``num_experts_per_tok`` of ``num_local_experts``
experts by a softmax over the router's logits; the chosen probabilities are
renormalised to sum to one and weight the experts' outputs.

The experts are held fused, as transformers 5 holds them:
``mlp.experts.gate_up_proj`` (``[experts, 2 * intermediate, hidden]``, the
gate rows first) and ``mlp.experts.down_proj`` (``[experts, hidden, intermediate]``).
Both checkpoint spellings load: the fused one, and the original per-expert one
(``block_sparse_moe.experts.E.w1/w3/w2.weight``, ``block_sparse_moe.gate.weight``)
that Mixtral checkpoints on the Hub use and transformers still writes.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from modelport.distributed.layers import all_reduce
from modelport.distributed.state import SINGLE, ParallelState
from modelport.models.linear import linear
from modelport.models.llama import ACTIVATIONS, DecoderShape, MistralForCausalLM, WeightTarget

_LEGACY_EXPERT = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$")
_LEGACY_GATE = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.gate\.weight$")


class Experts(nn.Module):
    """The experts of one layer, fused into two 3D parameters.

    With tensor parallelism every rank holds every expert, sliced along the intermediate
    width (vLLM's default for a mixture of experts): gate and up rows, down columns.
    """

    def __init__(self, shape: DecoderShape, dtype: torch.dtype, parallel: ParallelState = SINGLE) -> None:
        super().__init__()
        e, h, i = shape.num_experts, shape.hidden_size, shape.intermediate_size // parallel.world_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, h, dtype=dtype))
        self.down_proj = nn.Parameter(torch.empty(e, h, i, dtype=dtype))
        self.act = ACTIVATIONS[shape.hidden_act]

    def forward(self, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Sum, for each token of ``x``, its ``chosen`` experts' outputs times their ``weights``."""
        out = torch.zeros_like(x)
        for expert in torch.unique(chosen).tolist():
            token, slot = torch.where(chosen == expert)
            gate, up = linear(x[token], self.gate_up_proj[expert]).chunk(2, dim=-1)
            y = linear(self.act(gate) * up, self.down_proj[expert])
            out.index_add_(0, token, (y * weights[token, slot, None]).to(out.dtype))
        return out


class Router(nn.Module):
    """Scores the experts for each token (``gate.weight``: ``[experts, hidden]``)."""

    def __init__(self, shape: DecoderShape, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(shape.num_experts, shape.hidden_size, dtype=dtype))
        self.top_k = shape.num_experts_per_tok

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen experts (``[T, top_k]``) and their renormalised probabilities (float32)."""
        probs = torch.softmax(linear(x, self.weight).float(), dim=-1)
        top, chosen = torch.topk(probs, self.top_k, dim=-1)
        return chosen, top / top.sum(dim=-1, keepdim=True)


class SparseMoeBlock(nn.Module):
    """Router plus experts (``mlp.gate``, ``mlp.experts``)."""

    def __init__(self, shape: DecoderShape, dtype: torch.dtype, parallel: ParallelState = SINGLE) -> None:
        super().__init__()
        self.gate = Router(shape, dtype)
        self.experts = Experts(shape, dtype, parallel)
        self.parallel = parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Route each token of ``x`` (``[T, hidden]``) through its experts."""
        chosen, weights = self.gate(x)  # the same choice on every rank: the router is whole everywhere
        out: torch.Tensor = self.experts(x, chosen, weights)
        return all_reduce(out, self.parallel)  # the ranks' partial sums, one all-reduce after the MLP


class MixtralForCausalLM(MistralForCausalLM):
    """MixtralForCausalLM: Mistral's attention, a sparse mixture of experts in every layer."""

    @classmethod
    def decoder_shape(cls, hf_config: Any) -> DecoderShape:
        """Mistral's shape plus ``num_local_experts`` and ``num_experts_per_tok``."""
        return replace(
            super().decoder_shape(hf_config),
            num_experts=int(hf_config.num_local_experts),
            num_experts_per_tok=int(hf_config.num_experts_per_tok),
        )

    def build_mlp(self, shape: DecoderShape, layer: int, dtype: torch.dtype) -> nn.Module:
        """A sparse mixture of experts."""
        return SparseMoeBlock(shape, dtype, self.parallel)

    def weight_target(self, name: str) -> WeightTarget | None:
        """Per-expert ``w1``/``w3`` fill halves of ``gate_up_proj``, ``w2`` a row of ``down_proj``."""
        match = _LEGACY_EXPERT.match(name)
        if match:
            layer, expert, which = int(match[1]), int(match[2]), match[3]
            if expert >= self.shape.num_experts:
                return None
            prefix = f"model.layers.{layer}.mlp.experts."
            i = self.shape.intermediate_size // self.parallel.world_size  # this rank's rows
            if which == "w2":
                return WeightTarget(prefix + "down_proj", (expert,), (expert, which))
            rows = slice(0, i) if which == "w1" else slice(i, 2 * i)
            return WeightTarget(prefix + "gate_up_proj", (expert, rows), (expert, which))
        match = _LEGACY_GATE.match(name)
        if match:
            return WeightTarget(f"model.layers.{match[1]}.mlp.gate.weight")
        return super().weight_target(name)

    def weight_shard(self, name: str, target: WeightTarget) -> tuple[int, bool] | None:
        """Experts split along the intermediate width: ``w1``/``w3`` rows, ``w2`` columns; the fused forms alike."""
        if target.parameter.endswith(".mlp.experts.gate_up_proj"):
            return (0, False) if target.index is not None else (1, True)  # w1/w3 [I, H]; fused [E, 2I, H]
        if target.parameter.endswith(".mlp.experts.down_proj"):
            return (1, False) if target.index is not None else (2, False)  # w2 [H, I]; fused [E, H, I]
        return super().weight_shard(name, target)

    def weight_pieces(self, parameter: str) -> frozenset[Any]:
        """A fused expert tensor is whole when every expert's pieces are in."""
        experts = range(self.shape.num_experts)
        if parameter.endswith(".mlp.experts.gate_up_proj"):
            return frozenset((e, w) for e in experts for w in ("w1", "w3"))
        if parameter.endswith(".mlp.experts.down_proj"):
            return frozenset((e, "w2") for e in experts)
        return super().weight_pieces(parameter)
