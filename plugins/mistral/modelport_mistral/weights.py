"""Consolidated weights: Mistral's tensor names mapped to the Hugging Face names, RoPE rows permuted.

Mistral's consolidated checkpoints name tensors as its reference code does
(``tok_embeddings``, ``layers.N.attention.wq``, ``feed_forward.w1``...) and
keep the query and key projections in the interleaved rotary layout (the two
halves of each rotated pair side by side). modelport's native models and
transformers use Hugging Face's names and the half-split layout, so each
``wq``/``wk`` is permuted as Hugging Face's conversion script and vLLM do
(per head: rows ``(pairs, 2)`` become ``(2, pairs)``).

Mapping (after ``layers.N.``, which becomes ``model.layers.N.``):

========================================  ==============================================
``attention.wq`` / ``wk`` / ``wv`` / ``wo``  ``self_attn.q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``
``attention_norm``                        ``input_layernorm``
``ffn_norm``                              ``post_attention_layernorm``
``feed_forward.w1`` / ``w2`` / ``w3``     ``mlp.gate_proj`` / ``down_proj`` / ``up_proj``
``feed_forward.gate``                     ``block_sparse_moe.gate`` (MoE router)
``feed_forward.experts.E.w1/w2/w3``       ``block_sparse_moe.experts.E.w1/w2/w3``
========================================  ==============================================

and at the top ``tok_embeddings`` -> ``model.embed_tokens``, ``norm`` ->
``model.norm``, ``output`` -> ``lm_head``. A name that is not in the table is
passed through unchanged (the model then reports it as unexpected).
``.pth`` files are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from modelport.errors import WeightsCorruptError
from modelport.types import WeightFiles
from modelport.weight_checks import current_weight_file

_TOP = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_PARTS = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.gate.weight": "block_sparse_moe.gate.weight",
}
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^feed_forward\.experts\.(\d+)\.(w[123])\.weight$")


def hf_name(name: str) -> str:
    """The Hugging Face name of consolidated tensor ``name`` (unchanged when it has none)."""
    if name in _TOP:
        return _TOP[name]
    match = _LAYER.match(name)
    if match:
        layer, rest = match.groups()
        if rest in _LAYER_PARTS:
            return f"model.layers.{layer}.{_LAYER_PARTS[rest]}"
        expert = _EXPERT.match(rest)
        if expert:
            return f"model.layers.{layer}.block_sparse_moe.experts.{expert[1]}.{expert[2]}.weight"
    return name


def from_interleaved_rope(weight: Any, n_heads: int) -> Any:
    """Hugging Face's half-split rotary layout for an interleaved ``wq``/``wk`` (``[n_heads * head_dim, in]``)."""
    rows, cols = weight.shape
    return weight.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


class ConsolidatedNames:
    """Maps ``(consolidated name, tensor)`` to ``(Hugging Face name, tensor)`` for one config."""

    def __init__(self, hf_config: Any) -> None:
        text = hf_config.get_text_config() if callable(getattr(hf_config, "get_text_config", None)) else hf_config
        self.num_heads = int(text.num_attention_heads)
        self.num_kv_heads = int(getattr(text, "num_key_value_heads", None) or self.num_heads)

    def __call__(self, name: str, tensor: Any) -> tuple[str, Any]:
        """The Hugging Face name and the tensor, permuted for ``wq``/``wk``.

        Only names of the table are permuted (``evil.attention.wq.weight`` passes
        through unchanged, to be reported unexpected).

        Raises:
            WeightsCorruptError: a ``wq``/``wk`` that is not a matrix whose rows split into pairs per head
                (naming the file, the tensor and its shape), which the permutation could not reshape.
        """
        mapped = hf_name(name)
        if mapped == name:
            return mapped, tensor
        if mapped.endswith(".self_attn.q_proj.weight"):
            heads = self.num_heads
        elif mapped.endswith(".self_attn.k_proj.weight"):
            heads = self.num_kv_heads
        else:
            return mapped, tensor
        shape = tuple(tensor.shape)
        if len(shape) != 2 or shape[0] % (2 * heads):
            raise WeightsCorruptError(
                current_weight_file(),
                f"tensor {name!r} has shape {list(shape)}; a rotary projection of {heads} heads is a matrix "
                f"whose rows are a multiple of {2 * heads} (2 x heads)",
            )
        return mapped, from_interleaved_rope(tensor, heads)


def iter_consolidated(weights: WeightFiles, hf_config: Any) -> Iterator[tuple[str, Any]]:
    """Stream ``(Hugging Face name, tensor)`` from consolidated safetensors or ``.pth`` files."""
    rename = ConsolidatedNames(hf_config)
    for name, tensor in _iter_raw(weights):
        yield rename(name, tensor)


def _iter_raw(weights: WeightFiles) -> Iterator[tuple[str, Any]]:
    """Every tensor of every file in read order, through modelport-hf's readers (safetensors, else ``torch.load``)."""
    from modelport_hf.weights import iter_pt, iter_safetensors

    for file in weights.files:
        reader = iter_safetensors if file.endswith(".safetensors") else iter_pt
        yield from reader(replace(weights, files=(file,)))
