"""Config classes for model types that transformers does not know.

Registered by ``model_type`` through ``modelport_register_config_classes`` and
consulted before ``AutoConfig``, so these published configs load without
running repository code. Each class keeps the checkpoint's own field names and
exposes transformers' standard names through ``attribute_map``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import DeepseekV2Config, DeepseekV3Config, PretrainedConfig


class RWConfig(PretrainedConfig):  # type: ignore[misc]
    """Falcon's original "RefinedWeb" config (``model_type`` ``RefinedWeb`` or ``RefinedWebModel``).

    ``RefinedWeb`` checkpoints (Falcon-40B) use the new decoder architecture
    (grouped KV heads, ``n_head_kv``); ``RefinedWebModel`` ones (Falcon-7B)
    use multi-query attention.
    """

    model_type = "RefinedWeb"
    attribute_map: ClassVar[dict[str, str]] = {
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "num_kv_heads": "n_head_kv",
    }

    def __init__(
        self,
        vocab_size: int = 250880,
        hidden_size: int = 64,
        n_layer: int = 2,
        n_head: int = 8,
        layer_norm_epsilon: float = 1e-5,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        hidden_dropout: float = 0.0,
        attention_dropout: float = 0.0,
        multi_query: bool = True,
        n_head_kv: int | None = None,
        alibi: bool = False,
        bias: bool = False,
        parallel_attn: bool = False,
        new_decoder_architecture: bool = False,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.n_layer = n_layer
        self.n_head = n_head
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.multi_query = multi_query
        self.n_head_kv = 1 if n_head_kv is None else n_head_kv
        self.alibi = alibi
        self.bias = bias
        self.parallel_attn = parallel_attn
        self.new_decoder_architecture = new_decoder_architecture
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        if self.model_type == "RefinedWeb":
            # Falcon-40B's checkpoints predate the flag; their layout is the new decoder architecture.
            self.new_decoder_architecture = True

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.hidden_size // self.n_head

    @property
    def rotary(self) -> bool:
        """Falcon uses RoPE unless ALiBi is on."""
        return not self.alibi


class RWModelConfig(RWConfig):
    """The ``RefinedWebModel`` spelling (Falcon-7B): multi-query attention."""

    model_type = "RefinedWebModel"

    def __init__(self, **kwargs: Any) -> None:
        # transformers 5 makes every config subclass a dataclass; without an __init__ of its own this class
        # would get a generated one that skips RWConfig's.
        super().__init__(**kwargs)


class ChatGLMConfig(PretrainedConfig):  # type: ignore[misc]
    """ChatGLM2/3 and GLM-4 (``model_type`` ``chatglm``), as published with their remote code."""

    model_type = "chatglm"
    attribute_map: ClassVar[dict[str, str]] = {
        "num_hidden_layers": "num_layers",
        "n_head_kv": "multi_query_group_num",
        "vocab_size": "padded_vocab_size",
    }

    def __init__(
        self,
        num_layers: int = 28,
        padded_vocab_size: int = 65024,
        hidden_size: int = 4096,
        ffn_hidden_size: int = 13696,
        kv_channels: int = 128,
        num_attention_heads: int = 32,
        seq_length: int = 2048,
        hidden_dropout: float = 0.0,
        attention_dropout: float = 0.0,
        layernorm_epsilon: float = 1e-5,
        rmsnorm: bool = True,
        apply_residual_connection_post_layernorm: bool = False,
        post_layer_norm: bool = True,
        add_bias_linear: bool = False,
        add_qkv_bias: bool = False,
        interleaved_qkv: bool = False,
        bias_dropout_fusion: bool = True,
        multi_query_attention: bool = False,
        multi_query_group_num: int = 1,
        apply_query_key_layer_scaling: bool = True,
        attention_softmax_in_fp32: bool = True,
        fp32_residual_connection: bool = False,
        quantization_bit: int = 0,
        pre_seq_len: int | None = None,
        prefix_projection: bool = False,
        rope_ratio: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self.num_layers = num_layers
        self.padded_vocab_size = padded_vocab_size
        self.hidden_size = hidden_size
        self.ffn_hidden_size = ffn_hidden_size
        self.kv_channels = kv_channels
        self.num_attention_heads = num_attention_heads
        self.seq_length = seq_length
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.layernorm_epsilon = layernorm_epsilon
        self.rmsnorm = rmsnorm
        self.apply_residual_connection_post_layernorm = apply_residual_connection_post_layernorm
        self.post_layer_norm = post_layer_norm
        self.add_bias_linear = add_bias_linear
        self.add_qkv_bias = add_qkv_bias
        self.interleaved_qkv = interleaved_qkv
        self.bias_dropout_fusion = bias_dropout_fusion
        self.multi_query_attention = multi_query_attention
        self.multi_query_group_num = multi_query_group_num
        self.apply_query_key_layer_scaling = apply_query_key_layer_scaling
        self.attention_softmax_in_fp32 = attention_softmax_in_fp32
        self.fp32_residual_connection = fp32_residual_connection
        self.quantization_bit = quantization_bit
        self.pre_seq_len = pre_seq_len
        self.prefix_projection = prefix_projection
        self.rope_ratio = rope_ratio
        super().__init__(**kwargs)


class KimiK2Config(DeepseekV3Config):  # type: ignore[misc]
    """Kimi K2 (``model_type`` ``kimi_k2``): DeepSeek V3's architecture under another name."""

    model_type = "kimi_k2"


class DeepseekVLV2Config(PretrainedConfig):  # type: ignore[misc]
    """DeepSeek-VL2 and DeepSeek-OCR (``model_type`` ``deepseek_vl_v2``).

    The language model is a DeepSeek V2 config under ``language_config``;
    the vision tower and projector are kept as plain sub-configs.
    """

    model_type = "deepseek_vl_v2"

    def __init__(
        self,
        language_config: dict[str, Any] | PretrainedConfig | None = None,
        vision_config: dict[str, Any] | PretrainedConfig | None = None,
        projector_config: dict[str, Any] | PretrainedConfig | None = None,
        **kwargs: Any,
    ) -> None:
        self.language_config = _sub_config(language_config, DeepseekV2Config)
        self.vision_config = _sub_config(vision_config, PretrainedConfig)
        self.projector_config = _sub_config(projector_config, PretrainedConfig)
        super().__init__(**kwargs)

    def get_text_config(self, *args: Any, **kwargs: Any) -> PretrainedConfig:
        """The DeepSeek V2 language model's config."""
        return self.language_config


def _sub_config(value: dict[str, Any] | PretrainedConfig | None, cls: type[PretrainedConfig]) -> PretrainedConfig:
    if isinstance(value, PretrainedConfig):
        return value
    data = dict(value or {})
    data.pop("auto_map", None)  # the parent's class is registered here; the sub-config's remote code never runs
    data.pop("model_type", None)
    # Published sub-configs write null for "not used" (kv_lora_rank without MLA); the class defaults stand in.
    return cls(**{k: v for k, v in data.items() if v is not None})
