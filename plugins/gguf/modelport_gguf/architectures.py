"""GGUF architecture tables: how a file's ``general.architecture`` becomes a transformers config and HF names.

A table (:class:`GGUFArchitecture`) says, for one GGUF architecture name,
which ``model_type`` and architecture class it becomes, which metadata keys
(``{arch}.block_count``...) fill which config attributes, how GGUF tensor
names map to Hugging Face parameter names, and which tensors llama.cpp's
converter transformed (Q/K rows permuted for rotary embeddings, Gemma's norm
weights stored plus one, GPT-2's Conv1D weights transposed) so that the
transformation can be undone. Tables are registered through the
``modelport_register_gguf_architectures`` hook, so another plugin can add an
architecture or replace one (the first registration of a name wins, and the
trace names the plugin whose table answered).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GGUFArchitecture:
    """How to read one GGUF architecture.

    Attributes:
        model_type: the transformers ``model_type`` the config gets (``llama``).
        architecture: the ``config.architectures`` entry (``LlamaForCausalLM``).
        config_keys: metadata key, without the ``{arch}.`` prefix -> config attribute.
        tensors: GGUF tensor name with ``{bid}`` for the block -> HF name. A name
            without ``.weight``/``.bias`` stands for both.
        fused: HF name -> GGUF names concatenated along dimension 1 (``{bid}`` allowed),
            for parameters transformers holds fused (Mixtral's ``gate_up_proj``).
        transforms: HF name suffix -> what llama.cpp's converter did to it and what
            is undone here: ``permute_q``/``permute_k`` (rotary row order),
            ``minus_one`` (norm stored plus one), ``transpose`` (Conv1D).
        defaults: config attributes set before the metadata's (the metadata wins).
        with_experts: another table's name, used instead when ``{arch}.expert_count`` > 0.
    """

    model_type: str
    architecture: str
    config_keys: Mapping[str, str]
    tensors: Mapping[str, str]
    fused: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    transforms: Mapping[str, str] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    with_experts: str | None = None


#: Keys most architectures share.
COMMON_KEYS: dict[str, str] = {
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
}
_MOE_KEYS = {
    "expert_count": "num_experts",
    "expert_used_count": "num_experts_per_tok",
    "expert_feed_forward_length": "moe_intermediate_size",
}

#: The decoder's tensors in llama.cpp's names and transformers' (Llama, Mistral, Qwen...).
DECODER_TENSORS: dict[str, str] = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "blk.{bid}.attn_norm": "model.layers.{bid}.input_layernorm",
    "blk.{bid}.attn_q": "model.layers.{bid}.self_attn.q_proj",
    "blk.{bid}.attn_k": "model.layers.{bid}.self_attn.k_proj",
    "blk.{bid}.attn_v": "model.layers.{bid}.self_attn.v_proj",
    "blk.{bid}.attn_output": "model.layers.{bid}.self_attn.o_proj",
    "blk.{bid}.attn_q_norm": "model.layers.{bid}.self_attn.q_norm",
    "blk.{bid}.attn_k_norm": "model.layers.{bid}.self_attn.k_norm",
    "blk.{bid}.ffn_norm": "model.layers.{bid}.post_attention_layernorm",
    "blk.{bid}.ffn_gate": "model.layers.{bid}.mlp.gate_proj",
    "blk.{bid}.ffn_up": "model.layers.{bid}.mlp.up_proj",
    "blk.{bid}.ffn_down": "model.layers.{bid}.mlp.down_proj",
}
#: Experts held fused, as transformers 5 and the native Mixtral hold them.
_MOE_TENSORS = {
    "blk.{bid}.ffn_gate_inp": "model.layers.{bid}.mlp.gate",
    "blk.{bid}.ffn_down_exps.weight": "model.layers.{bid}.mlp.experts.down_proj",
}
_MOE_FUSED = {
    "model.layers.{bid}.mlp.experts.gate_up_proj": ("blk.{bid}.ffn_gate_exps.weight", "blk.{bid}.ffn_up_exps.weight")
}
_SHARED_EXPERT_TENSORS = {
    "blk.{bid}.ffn_gate_inp_shexp": "model.layers.{bid}.mlp.shared_expert_gate",
    "blk.{bid}.ffn_gate_shexp": "model.layers.{bid}.mlp.shared_expert.gate_proj",
    "blk.{bid}.ffn_up_shexp": "model.layers.{bid}.mlp.shared_expert.up_proj",
    "blk.{bid}.ffn_down_shexp": "model.layers.{bid}.mlp.shared_expert.down_proj",
}
_ROPE_PERMUTED = {"self_attn.q_proj.weight": "permute_q", "self_attn.k_proj.weight": "permute_k"}

LLAMA = GGUFArchitecture(
    "llama",
    "LlamaForCausalLM",
    {**COMMON_KEYS, "attention.key_length": "head_dim"},
    DECODER_TENSORS,
    transforms=_ROPE_PERMUTED,
    with_experts="mixtral",
)
MISTRAL = GGUFArchitecture(
    "mistral",
    "MistralForCausalLM",
    {**COMMON_KEYS, "attention.key_length": "head_dim", "attention.sliding_window": "sliding_window"},
    DECODER_TENSORS,
    transforms=_ROPE_PERMUTED,
    with_experts="mixtral",
)
MIXTRAL = GGUFArchitecture(
    "mixtral",
    "MixtralForCausalLM",
    {**COMMON_KEYS, "expert_count": "num_local_experts", "expert_used_count": "num_experts_per_tok"},
    {**DECODER_TENSORS, **_MOE_TENSORS},
    fused=_MOE_FUSED,
    transforms=_ROPE_PERMUTED,
)
QWEN2 = GGUFArchitecture("qwen2", "Qwen2ForCausalLM", {**COMMON_KEYS}, DECODER_TENSORS)
QWEN3 = GGUFArchitecture(
    "qwen3", "Qwen3ForCausalLM", {**COMMON_KEYS, "attention.key_length": "head_dim"}, DECODER_TENSORS
)
QWEN2MOE = GGUFArchitecture(
    "qwen2_moe",
    "Qwen2MoeForCausalLM",
    {**COMMON_KEYS, **_MOE_KEYS, "expert_shared_feed_forward_length": "shared_expert_intermediate_size"},
    {**DECODER_TENSORS, **_MOE_TENSORS, **_SHARED_EXPERT_TENSORS},
    fused=_MOE_FUSED,
)
QWEN3MOE = GGUFArchitecture(
    "qwen3_moe",
    "Qwen3MoeForCausalLM",
    {**COMMON_KEYS, **_MOE_KEYS, "attention.key_length": "head_dim"},
    {**DECODER_TENSORS, **_MOE_TENSORS},
    fused=_MOE_FUSED,
)
_GEMMA_TENSORS = {
    **DECODER_TENSORS,
    "blk.{bid}.post_attention_norm": "model.layers.{bid}.post_attention_layernorm",
    "blk.{bid}.ffn_norm": "model.layers.{bid}.pre_feedforward_layernorm",
    "blk.{bid}.post_ffw_norm": "model.layers.{bid}.post_feedforward_layernorm",
}
_GEMMA_NORMS = {
    suffix: "minus_one"
    for suffix in (
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        "pre_feedforward_layernorm.weight",
        "post_feedforward_layernorm.weight",
        "q_norm.weight",
        "k_norm.weight",
        "model.norm.weight",
    )
}
GEMMA2 = GGUFArchitecture(
    "gemma2",
    "Gemma2ForCausalLM",
    {
        **COMMON_KEYS,
        "attention.key_length": "head_dim",
        "attention.sliding_window": "sliding_window",
        "attn_logit_softcapping": "attn_logit_softcapping",
        "final_logit_softcapping": "final_logit_softcapping",
    },
    _GEMMA_TENSORS,
    transforms=_GEMMA_NORMS,
)
GEMMA3 = GGUFArchitecture(
    "gemma3_text",
    "Gemma3ForCausalLM",
    {**COMMON_KEYS, "attention.key_length": "head_dim", "attention.sliding_window": "sliding_window"},
    _GEMMA_TENSORS,
    transforms=_GEMMA_NORMS,
)
PHI3 = GGUFArchitecture(
    "phi3",
    "Phi3ForCausalLM",
    {
        **COMMON_KEYS,
        "rope.scaling.original_context_length": "original_max_position_embeddings",
        "attention.sliding_window": "sliding_window",
    },
    {
        **DECODER_TENSORS,
        "blk.{bid}.attn_qkv": "model.layers.{bid}.self_attn.qkv_proj",
        "blk.{bid}.ffn_up": "model.layers.{bid}.mlp.gate_up_proj",
    },
)
STARCODER2 = GGUFArchitecture(
    "starcoder2",
    "Starcoder2ForCausalLM",
    {**COMMON_KEYS, "attention.layer_norm_epsilon": "norm_epsilon", "attention.sliding_window": "sliding_window"},
    {
        **DECODER_TENSORS,
        "blk.{bid}.ffn_up": "model.layers.{bid}.mlp.c_fc",
        "blk.{bid}.ffn_down": "model.layers.{bid}.mlp.c_proj",
    },
)
GPT2 = GGUFArchitecture(
    "gpt2",
    "GPT2LMHeadModel",
    {
        "context_length": "n_positions",
        "embedding_length": "n_embd",
        "block_count": "n_layer",
        "feed_forward_length": "n_inner",
        "attention.head_count": "n_head",
        "attention.layer_norm_epsilon": "layer_norm_epsilon",
        "vocab_size": "vocab_size",
    },
    {
        "token_embd": "transformer.wte",
        "position_embd": "transformer.wpe",
        "output_norm": "transformer.ln_f",
        "output": "lm_head",
        "blk.{bid}.attn_norm": "transformer.h.{bid}.ln_1",
        "blk.{bid}.attn_qkv": "transformer.h.{bid}.attn.c_attn",
        "blk.{bid}.attn_output": "transformer.h.{bid}.attn.c_proj",
        "blk.{bid}.ffn_norm": "transformer.h.{bid}.ln_2",
        "blk.{bid}.ffn_up": "transformer.h.{bid}.mlp.c_fc",
        "blk.{bid}.ffn_down": "transformer.h.{bid}.mlp.c_proj",
    },
    transforms={
        "attn.c_attn.weight": "transpose",
        "attn.c_proj.weight": "transpose",
        "mlp.c_fc.weight": "transpose",
        "mlp.c_proj.weight": "transpose",
    },
)
FALCON = GGUFArchitecture(
    "falcon",
    "FalconForCausalLM",
    {
        "context_length": "max_position_embeddings",
        "embedding_length": "hidden_size",
        "block_count": "num_hidden_layers",
        "attention.head_count": "num_attention_heads",
        "attention.head_count_kv": "num_kv_heads",
        "attention.layer_norm_epsilon": "layer_norm_epsilon",
        "vocab_size": "vocab_size",
    },
    {
        "token_embd": "transformer.word_embeddings",
        "output_norm": "transformer.ln_f",
        "output": "lm_head",
        "blk.{bid}.attn_norm": "transformer.h.{bid}.input_layernorm",
        "blk.{bid}.attn_norm_2": "transformer.h.{bid}.ln_mlp",
        "blk.{bid}.attn_qkv": "transformer.h.{bid}.self_attention.query_key_value",
        "blk.{bid}.attn_output": "transformer.h.{bid}.self_attention.dense",
        "blk.{bid}.ffn_up": "transformer.h.{bid}.mlp.dense_h_to_4h",
        "blk.{bid}.ffn_down": "transformer.h.{bid}.mlp.dense_4h_to_h",
    },
    defaults={"parallel_attn": True, "bias": False, "alibi": False},
)

#: GGUF ``general.architecture`` -> table, as this plugin registers them (``modelport_gguf.architectures:NAME``).
TABLES: dict[str, str] = {
    "llama": "LLAMA",
    "mistral": "MISTRAL",
    "mixtral": "MIXTRAL",
    "qwen2": "QWEN2",
    "qwen3": "QWEN3",
    "qwen2moe": "QWEN2MOE",
    "qwen3moe": "QWEN3MOE",
    "gemma2": "GEMMA2",
    "gemma3": "GEMMA3",
    "phi3": "PHI3",
    "starcoder2": "STARCODER2",
    "gpt2": "GPT2",
    "falcon": "FALCON",
}
