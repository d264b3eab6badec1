"""Native InternLM2 and InternLM2.5 (``InternLM2ForCausalLM``, ``model_type`` ``internlm2``).

transformers does not implement InternLM2: its checkpoints ship remote code
(``modeling_internlm2.py`` and ``configuration_internlm2.py``, so the config
needs ``trust_remote_code``), and vLLM serves them with a native class. The
decoder is Llama's (RMSNorm, grouped-query attention with rotary positions over
the two halves of each head, a SiLU-gated MLP); the checkpoints differ in names
and in one fused projection:

* ``attention.wqkv`` holds, for each key/value head in turn, its group of query
  heads, then its key head, then its value head (``[kv_heads, group + 2,
  head_dim, hidden]``); it is split into the Llama layers' q, k and v
  projections as it loads;
* ``tok_embeddings``, ``attention_norm``, ``ffn_norm``, ``attention.wo``,
  ``feed_forward.w1``/``w3``/``w2`` and ``output`` are Llama's
  ``embed_tokens``, ``input_layernorm``, ``post_attention_layernorm``,
  ``o_proj``, ``gate_proj``/``up_proj``/``down_proj`` and ``lm_head``;
* the config's ``bias`` gives ``wqkv`` and ``wo`` biases, as the remote code
  does (vLLM 0.32 builds them without; no published checkpoint has them).

RoPE (``rope_theta``, ``rope_scaling`` of type ``dynamic`` or ``linear``) goes
through :mod:`modelport.models.rope`, like every Llama-family model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import torch

from modelport.models.llama import DecoderShape, LlamaForCausalLM
from modelport.pipeline import WeightReport

_WQKV = re.compile(r"^model\.layers\.(\d+)\.attention\.wqkv\.(weight|bias)$")
#: Checkpoint name parts and the Llama parameter name parts they load into.
RENAMES = (
    (re.compile(r"^model\.tok_embeddings\."), "model.embed_tokens."),
    (re.compile(r"\.attention_norm\."), ".input_layernorm."),
    (re.compile(r"\.ffn_norm\."), ".post_attention_layernorm."),
    (re.compile(r"\.attention\.wo\."), ".self_attn.o_proj."),
    (re.compile(r"\.feed_forward\.w1\."), ".mlp.gate_proj."),
    (re.compile(r"\.feed_forward\.w3\."), ".mlp.up_proj."),
    (re.compile(r"\.feed_forward\.w2\."), ".mlp.down_proj."),
    (re.compile(r"^output\."), "lm_head."),
)


def split_wqkv(tensor: torch.Tensor, num_kv_heads: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    """The q, k and v parts of a grouped ``wqkv`` weight (``[rows, hidden]``) or bias (``[rows]``)."""
    rest = tensor.shape[1:]
    grouped = tensor.reshape(num_kv_heads, -1, head_dim, *rest)
    group = grouped.shape[1] - 2
    q = grouped[:, :group].reshape(num_kv_heads * group * head_dim, *rest)
    k = grouped[:, group].reshape(num_kv_heads * head_dim, *rest)
    v = grouped[:, group + 1].reshape(num_kv_heads * head_dim, *rest)
    return q, k, v


class InternLM2ForCausalLM(LlamaForCausalLM):
    """InternLM2ForCausalLM, natively: the Llama decoder fed from InternLM2's checkpoint names."""

    attention_bias = "none"
    mlp_bias_from_config = False
    supports_tensor_parallel = False  # its fused, interleaved wqkv is not split across ranks

    @classmethod
    def decoder_shape(cls, hf_config: Any) -> DecoderShape:
        """Llama's shape, with ``bias`` (InternLM2's name) for the attention projections."""
        shape = super().decoder_shape(hf_config)
        bias = bool(getattr(hf_config, "bias", False))
        return replace(shape, qkv_bias=bias, o_bias=bias)

    def internlm2_names(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """The checkpoint's tensors under the Llama parameter names (``wqkv`` split in three)."""
        s = self.shape
        for name, tensor in weights:
            fused = _WQKV.match(name)
            if fused is not None:
                layer, kind = fused.groups()
                parts = split_wqkv(tensor, s.num_kv_heads, s.head_dim)
                for projection, part in zip(("q_proj", "k_proj", "v_proj"), parts, strict=True):
                    yield f"model.layers.{layer}.self_attn.{projection}.{kind}", part.contiguous()
                continue
            for pattern, replacement in RENAMES:
                name = pattern.sub(replacement, name)
            yield name, tensor

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> WeightReport:
        """Load an InternLM2 checkpoint: names mapped, ``wqkv`` split, then Llama's loading."""
        return super().load_weights(self.internlm2_names(weights))
