"""Facts derived from a patched config: text config, dtype, context length, shape.

These are format-independent: they read only attributes that a
``transformers.PretrainedConfig`` may carry, so they hold for configs that any
plugin produced. The rules follow vLLM's ``ModelConfig`` (0.32), so that an
engine moving to modelport sees the same numbers; where modelport differs on
purpose, the function's docstring says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from modelport.errors import InvalidConfigError, InvalidOptionError

#: Config keys that state a context length; the smallest present wins (vLLM's list and order).
CONTEXT_LENGTH_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
#: Sentence-transformers files whose ``max_seq_length`` sets a model's length (vLLM's list and order).
SENTENCE_TRANSFORMERS_CONFIGS = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)
#: Used when a config states no context length at all (vLLM's default).
DEFAULT_MAX_MODEL_LEN = 2048
#: RoPE types whose ``factor`` is not applied to the context length: their configs state the scaled
#: length already (vLLM 0.32's list, with the YaRN family below).
UNSCALED_ROPE_TYPES = ("su", "longrope", "llama3", "deepseek_llama_scaling")
#: YaRN and its vendor spellings. Since vLLM 0.32 (vllm-project/vllm#56446, aligning with
#: transformers' ``_compute_yarn_parameters``) their ``factor`` never scales ``max_position_embeddings``,
#: which YaRN configs state already scaled; before, plain ``yarn`` gave
#: ``original_max_position_embeddings * factor`` and the vendor spellings multiplied the scaled length
#: again. vLLM 0.32 lists ``yarn`` and ``deepseek_yarn`` and renames ``telechat3-yarn`` to ``yarn`` when
#: it loads the config; all three are listed here.
YARN_ROPE_TYPES = ("yarn", "deepseek_yarn", "telechat3-yarn")
#: Architecture-name suffixes and the runner vLLM derives from them, in priority order.
RUNNER_BY_SUFFIX = (
    ("ForCausalLM", "generate"),
    ("ForConditionalGeneration", "generate"),
    ("ChatModel", "generate"),
    ("LMHeadModel", "generate"),
    ("ForTextEncoding", "pooling"),
    ("EmbeddingModel", "pooling"),
    ("ForSequenceClassification", "pooling"),
    ("ForAudioClassification", "pooling"),
    ("ForImageClassification", "pooling"),
    ("ForVideoClassification", "pooling"),
    ("ClassificationModel", "pooling"),
    ("ForRewardModeling", "pooling"),
    ("RewardModel", "pooling"),
    ("Model", "pooling"),
)
#: Architecture names that end in ``Model`` but that vLLM 0.32's registry lists as text generation models.
GENERATIVE_MODEL_NAMES = ("ChatGLMModel",)
#: Model types that must not run in float16 (numerical instability; vLLM's list).
NO_FLOAT16 = ("gemma2", "gemma3", "gemma3_text", "plamo2", "glm4")
#: Sub-config attributes that make a config multimodal.
MODALITY_CONFIGS = ("vision_config", "audio_config", "speech_config", "visual", "vision_tower_config", "image_config")
#: Model types whose attention is multi-head latent attention when ``kv_lora_rank`` is set.
MLA_MODEL_TYPES = (
    "deepseek_v2",
    "deepseek_v3",
    "deepseek_v32",
    "deepseek_mtp",
    "kimi_k2",
    "kimi_linear",
    "longcat_flash",
    "pangu_ultra_moe",
)
#: Attributes that count routed experts, in the order they are looked for.
EXPERT_COUNT_KEYS = ("num_experts", "moe_num_experts", "n_routed_experts", "num_local_experts")

_DTYPE_ALIASES = {"float": "float32", "half": "float16", "double": "float64"}


@dataclass(frozen=True)
class ModelFacts:
    """Shape and kind of a model, derived from its config without reading weights.

    Attributes:
        runner: ``generate`` or ``pooling``, from the architecture name's suffix (vLLM's rule).
        hidden_size: width of the language model.
        num_hidden_layers: its number of layers.
        num_attention_heads: query heads per layer.
        num_kv_heads: key/value heads per layer (1 for multi-query attention).
        head_dim: size of one attention head (for MLA: the compressed KV plus the RoPE part).
        vocab_size: the language model's vocabulary size.
        sliding_window: the attention window, or ``None`` for full attention.
        is_moe: whether the model routes tokens to more than one expert.
        num_experts: routed experts per MoE layer (0 when not MoE).
        is_multimodal: whether the config has a vision, audio or other non-text part.
        is_encoder_decoder: whether the model is an encoder-decoder.
        quantization: the ``quantization_config.quant_method``, or ``None``.
        uses_mla: multi-head latent attention (DeepSeek V2/V3 family).
    """

    runner: str
    hidden_size: int | None
    num_hidden_layers: int | None
    num_attention_heads: int | None
    num_kv_heads: int | None
    head_dim: int | None
    vocab_size: int | None
    sliding_window: int | None
    is_moe: bool
    num_experts: int
    is_multimodal: bool
    is_encoder_decoder: bool
    quantization: str | None
    uses_mla: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def text_config(hf_config: Any) -> Any:
    """The config of the language-model part (the config itself for text-only models)."""
    getter = getattr(hf_config, "get_text_config", None)
    if callable(getter):
        try:
            return getter()
        except (AttributeError, ValueError, TypeError):
            pass
    return hf_config


def _dtype_name(value: Any) -> str | None:
    if value is None:
        return None
    name = str(value).removeprefix("torch.")
    return _DTYPE_ALIASES.get(name, name)


def checkpoint_dtype(hf_config: Any) -> str | None:
    """The dtype the config says the checkpoint holds (root, then text, vision, encoder parts)."""
    candidates = [hf_config, text_config(hf_config)]
    candidates += [getattr(hf_config, a, None) for a in ("vision_config", "encoder_config")]
    for config in candidates:
        if config is None:
            continue
        # transformers 5 keeps ``torch_dtype`` only as a property that warns and returns ``dtype``:
        # read it only where an object stores it itself (an older config), never through the property.
        stored = getattr(config, "__dict__", {})
        for value in (getattr(config, "dtype", None), stored.get("torch_dtype")):
            name = _dtype_name(value)
            if name is not None:
                return name
    return None


def runner_of(architectures: list[str] | None) -> str:
    """``generate`` or ``pooling`` from the first architecture's suffix; no architecture means pooling.

    vLLM asks its registry before the suffix: the names of :data:`GENERATIVE_MODEL_NAMES` generate
    although they end in ``Model``.
    """
    for name in architectures or []:
        if name in GENERATIVE_MODEL_NAMES:
            return "generate"
        for suffix, runner in RUNNER_BY_SUFFIX:
            if name.endswith(suffix):
                return runner
    return "pooling" if not architectures else "generate"


#: Prefixes of dtype names that no model runs in (integer, boolean and complex types).
_NOT_FLOATING = ("int", "uint", "bool", "complex", "qint", "quint")


def resolve_dtype(option: str, hf_config: Any, *, device: str = "cpu") -> str:
    """The dtype the model will run in.

    ``auto`` keeps the checkpoint's dtype, except that float32 (or no stated
    dtype) becomes what vLLM picks on the device: bfloat16, or float16 for
    pooling models; model types unstable in float16 get bfloat16 instead.

    Raises:
        InvalidConfigError: with ``auto``, a checkpoint dtype that is not floating-point (``int8``, ``bool``).
    """
    if option != "auto":
        return _DTYPE_ALIASES.get(option, option)
    model_type = str(getattr(hf_config, "model_type", "") or "")
    preferred = "bfloat16"
    if runner_of(getattr(hf_config, "architectures", None)) == "pooling" and model_type not in NO_FLOAT16:
        preferred = "float16"
    found = checkpoint_dtype(hf_config) or "float32"
    if found.startswith(_NOT_FLOATING):
        # A model runs in a floating-point dtype; "int8" or "bool" would fail deep inside the build.
        raise InvalidConfigError(
            "config",
            "the checkpoint's dtype is not a floating-point type a model can run in; "
            "pass dtype='bfloat16' (or another floating-point dtype) to choose one",
            field="dtype",
            value=found,
        )
    if found == "float32":
        return preferred
    if found == "float16" and model_type in NO_FLOAT16:
        return "bfloat16"
    return found


def _rope_parameter_sets(hf_text_config: Any) -> list[Mapping[str, Any]]:
    params = getattr(hf_text_config, "rope_parameters", None)
    if not isinstance(params, Mapping) or not params:
        return []
    if all(isinstance(v, Mapping) for v in params.values()):  # per layer type (full_attention, sliding_attention...)
        return [v for v in params.values() if v]  # a layer type without RoPE does not count (vLLM)
    return [params]


def _stated_length(hf_text_config: Any) -> tuple[float, str]:
    """The smallest context length the config states, or ``inf`` (vLLM's key list and its override)."""
    derived: float = float("inf")
    key = ""
    for name in CONTEXT_LENGTH_KEYS:
        value = getattr(hf_text_config, name, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise InvalidConfigError("config", "a context length must be a positive number", field=name, value=value)
        if value < derived:
            derived, key = value, name
    model_max_length = getattr(hf_text_config, "model_max_length", None)
    if model_max_length:
        # Command-R, Cohere2, Aya Vision: model_max_length wins even when larger than the other keys.
        derived, key = model_max_length, "model_max_length"
    return derived, key


def _rope_factor(hf_text_config: Any) -> float:
    """The RoPE factor that scales the stated length: 1 when none does (see :func:`derived_max_model_len`)."""
    model_type = str(getattr(hf_text_config, "model_type", "") or "")
    if "gemma3" in model_type:
        return 1.0  # Gemma 3 states its RoPE-scaled length (128K) already
    factor: float | None = 1.0
    for params in _rope_parameter_sets(hf_text_config):
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type in UNSCALED_ROPE_TYPES or rope_type in YARN_ROPE_TYPES or "factor" not in params:
            continue
        # vLLM assumes every layer type shares one factor: the last one stated wins; a null one means 1.
        value = params["factor"]
        factor = None if value is None else _positive_number(value, "rope_parameters.factor")
    return 1.0 if factor is None else factor


def derived_max_model_len(
    hf_text_config: Any,
    *,
    sliding_window_cap: int | None = None,
    tokenizer_model_max_length: int | None = None,
    encoder_max_seq_length: int | None = None,
) -> tuple[int, str]:
    """The model's own context length and where it came from, following vLLM 0.32's ``_get_and_verify_max_len``.

    In order:

    1. the smallest of :data:`CONTEXT_LENGTH_KEYS` the config states; a truthy
       ``model_max_length`` overrides it even when larger;
    2. ``sliding_window_cap``: the sliding window, when the engine disables
       sliding attention and the window is shorter;
    3. ``tokenizer_model_max_length``: the tokenizer config's
       ``model_max_length`` caps it (vLLM reads it for pooling models with
       absolute position embeddings only);
    4. no length stated at all: :data:`DEFAULT_MAX_MODEL_LEN`;
    5. the RoPE ``factor`` multiplies it (``linear``, ``dynamic``...), except for
       ``su``/``longrope``/``llama3``, the YaRN family (:data:`YARN_ROPE_TYPES`)
       and Gemma 3, whose configs state the scaled length already; the factor
       is read from the normalised ``rope_parameters`` only, so nothing is
       scaled twice;
    6. ``encoder_max_seq_length`` (a sentence-transformers model's
       ``max_seq_length``) replaces the result.
    """
    derived, key = _stated_length(hf_text_config)
    if sliding_window_cap is not None and sliding_window_cap < derived:
        derived, key = sliding_window_cap, "sliding_window"
    if tokenizer_model_max_length is not None and tokenizer_model_max_length < derived:
        derived, key = tokenizer_model_max_length, "tokenizer model_max_length"
    if derived == float("inf"):
        derived, key = DEFAULT_MAX_MODEL_LEN, "default"
    factor = _rope_factor(hf_text_config)
    if factor != 1.0:
        derived *= factor
        key += " x rope factor"
    if encoder_max_seq_length is not None:
        derived, key = encoder_max_seq_length, "encoder max_seq_length"
    return int(derived), key


def length_caps(read_json: Callable[[str], Any], hf_config: Any) -> dict[str, int]:
    """The caps vLLM 0.32 reads beside config.json, as keyword arguments of :func:`resolve_max_model_len`.

    ``read_json(name)`` returns the parsed file ``name`` of the model, or ``None``
    when the model has none. The first of :data:`SENTENCE_TRANSFORMERS_CONFIGS`
    present gives ``encoder_max_seq_length`` (its ``max_seq_length``); for a pooling
    model with ``position_embedding_type: absolute``, tokenizer_config.json's
    ``model_max_length`` gives ``tokenizer_model_max_length``.
    """
    caps: dict[str, int] = {}
    for name in SENTENCE_TRANSFORMERS_CONFIGS:
        data = read_json(name)
        if isinstance(data, Mapping) and data:
            value = data.get("max_seq_length")
            if value is not None:
                caps["encoder_max_seq_length"] = int(_positive_number(value, f"{name}: max_seq_length"))
            break
    absolute = getattr(hf_config, "position_embedding_type", "") == "absolute"
    if absolute and runner_of(getattr(hf_config, "architectures", None)) == "pooling":
        data = read_json("tokenizer_config.json")
        value = data.get("model_max_length") if isinstance(data, Mapping) else None
        if value is not None:
            caps["tokenizer_model_max_length"] = int(
                min(_positive_number(value, "tokenizer_config.json: model_max_length"), 2**62)
            )
    return caps


def resolve_max_model_len(
    user_value: int | None,
    hf_text_config: Any,
    *,
    sliding_window_cap: int | None = None,
    tokenizer_model_max_length: int | None = None,
    encoder_max_seq_length: int | None = None,
) -> int:
    """The user's cap if it fits the model, else the model's own length (vLLM 0.32's rules).

    * A config that states no length at all takes the user's value as it is
      (vLLM returns it before any check); without one, :data:`DEFAULT_MAX_MODEL_LEN`.
    * With LongRoPE and no cap, the config's ``original_max_position_embeddings``
      is used, as vLLM does (longer contexts degrade short-sequence quality).
    * A cap above the derived length is allowed only up to the config's
      ``model_max_length``. vLLM lets ``VLLM_ALLOW_LONG_MAX_MODEL_LEN=1`` lift
      that check; modelport does not (past the trained length, RoPE models
      produce NaNs and absolute-position models index out of range).

    The keyword arguments are :func:`derived_max_model_len`'s.

    Raises:
        InvalidOptionError: the user asks for more than the model allows.
    """
    stated, _ = _stated_length(hf_text_config)
    capped = sliding_window_cap is not None or tokenizer_model_max_length is not None
    if user_value is not None and stated == float("inf") and not capped:
        return user_value
    derived, key = derived_max_model_len(
        hf_text_config,
        sliding_window_cap=sliding_window_cap,
        tokenizer_model_max_length=tokenizer_model_max_length,
        encoder_max_seq_length=encoder_max_seq_length,
    )
    if user_value is None:
        if any(p.get("rope_type") == "longrope" for p in _rope_parameter_sets(hf_text_config)):
            return int(getattr(hf_text_config, "original_max_position_embeddings", None) or derived)
        return derived
    if user_value > derived:
        model_max_length = getattr(hf_text_config, "model_max_length", None)
        if model_max_length is None or user_value > model_max_length:
            raise InvalidOptionError(
                "max_model_len",
                user_value,
                detail=f"the model allows at most {derived} tokens ({key} in its config)",
            )
    return user_value


def _first_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def num_kv_heads(hf_text_config: Any) -> int | None:
    """Key/value heads per layer: 1 for multi-query Falcon, the group count for ChatGLM..."""
    model_type = getattr(hf_text_config, "model_type", "")
    falcon_new_arch = model_type in ("falcon", "RefinedWeb", "RefinedWebModel") and getattr(
        hf_text_config, "new_decoder_architecture", False
    )
    if not falcon_new_arch and getattr(hf_text_config, "multi_query", False):
        return 1
    attn_config = getattr(hf_text_config, "attn_config", None)
    if attn_config is not None and getattr(attn_config, "kv_n_heads", None):
        return int(attn_config.kv_n_heads)
    if model_type == "chatglm" and not getattr(hf_text_config, "multi_query_attention", False):
        return _first_int(hf_text_config, "num_attention_heads")
    found = _first_int(hf_text_config, "n_head_kv", "num_kv_heads", "num_key_value_heads", "multi_query_group_num")
    return found if found is not None else _first_int(hf_text_config, "num_attention_heads", "n_head")


def uses_mla(hf_text_config: Any) -> bool:
    """Multi-head latent attention: a DeepSeek-family model type with ``kv_lora_rank``, not switched off.

    Other model types that carry ``kv_lora_rank`` (MiniCPM3) keep their stated
    ``head_dim``, as in vLLM.
    """
    return (
        getattr(hf_text_config, "model_type", None) in MLA_MODEL_TYPES
        and bool(getattr(hf_text_config, "kv_lora_rank", None))
        and getattr(hf_text_config, "use_mla", True) is not False
    )


def head_dim(hf_text_config: Any) -> int | None:
    """Size of one attention head (MLA: ``kv_lora_rank + qk_rope_head_dim``)."""
    if uses_mla(hf_text_config):
        return int(hf_text_config.kv_lora_rank) + int(hf_text_config.qk_rope_head_dim)
    explicit = _first_int(hf_text_config, "head_dim")
    if explicit:
        return explicit
    hidden = _first_int(hf_text_config, "hidden_size", "d_model", "n_embd")
    heads = _first_int(hf_text_config, "num_attention_heads", "n_head")
    return hidden // heads if hidden and heads else None


def num_experts(hf_text_config: Any) -> int:
    """Routed experts per MoE layer (DBRX's ``ffn_config`` too); 0 when not MoE."""
    for name in EXPERT_COUNT_KEYS:
        value = getattr(hf_text_config, name, None)
        if isinstance(value, (list, tuple)):
            if not all(_is_count(v) for v in value):
                raise InvalidConfigError("config", "expected expert counts", field=name, value=value)
            value = max(value) if value else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    ffn_config = getattr(hf_text_config, "ffn_config", None)
    value = getattr(ffn_config, "moe_num_experts", None) if ffn_config is not None else None
    return int(value) if isinstance(value, int) else 0


def quantization_method(hf_config: Any) -> str | None:
    """``quantization_config.quant_method`` of the config or its text part, lower-cased."""
    for config in (hf_config, text_config(hf_config)):
        qc = getattr(config, "quantization_config", None)
        if qc is None:
            continue
        method = qc.get("quant_method") if isinstance(qc, Mapping) else getattr(qc, "quant_method", None)
        if method:
            return str(getattr(method, "value", method)).lower()
    return None


def is_multimodal(hf_config: Any) -> bool:
    """Whether the config has a vision/audio part, or its text config is a sub-config."""
    if any(getattr(hf_config, name, None) is not None for name in MODALITY_CONFIGS):
        return True
    return bool(getattr(hf_config, "is_encoder_decoder", False)) and any(
        getattr(hf_config, name, None) for name in ("num_mel_bins", "max_source_positions")
    )


def sliding_window(hf_text_config: Any) -> int | None:
    """The sliding attention window, or ``None`` (``use_sliding_window=False`` disables it)."""
    if getattr(hf_text_config, "use_sliding_window", True) is False:
        return None
    value = getattr(hf_text_config, "sliding_window", None)
    if isinstance(value, (list, tuple)):  # per layer; null for a full-attention layer
        if not all(v is None or _is_count(v) for v in value):
            raise InvalidConfigError(
                "config", "expected window sizes or null per layer", field="sliding_window", value=value
            )
        windows = [v for v in value if v]
        return max(windows) if windows else None
    if value is not None and not _is_count(value):
        raise InvalidConfigError("config", "expected a window size or null", field="sliding_window", value=value)
    return value if value else None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _positive_number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidConfigError("config", "expected a positive number", field=field, value=value)
    return float(value)


def model_facts(hf_config: Any, hf_text_config: Any) -> ModelFacts:
    """Every fact of :class:`ModelFacts` for a patched config."""
    experts = num_experts(hf_text_config)
    return ModelFacts(
        runner=runner_of(getattr(hf_config, "architectures", None)),
        hidden_size=_first_int(hf_text_config, "hidden_size", "d_model", "n_embd"),
        num_hidden_layers=_first_int(hf_text_config, "num_hidden_layers", "num_layers", "n_layer"),
        num_attention_heads=_first_int(hf_text_config, "num_attention_heads", "n_head"),
        num_kv_heads=num_kv_heads(hf_text_config),
        head_dim=head_dim(hf_text_config),
        vocab_size=_first_int(hf_text_config, "vocab_size", "padded_vocab_size"),
        sliding_window=sliding_window(hf_text_config),
        is_moe=experts > 1,
        num_experts=experts if experts > 1 else 0,
        is_multimodal=is_multimodal(hf_config),
        is_encoder_decoder=bool(getattr(hf_config, "is_encoder_decoder", False)),
        quantization=quantization_method(hf_config),
        uses_mla=uses_mla(hf_text_config),
    )


def apply_overrides(hf_config: Any, overrides: Mapping[str, Any] | Any) -> Any:
    """Apply ``hf_overrides``: a dict (nested dicts reach sub-configs) or a callable.

    A nested dict whose key names a sub-config (``text_config``...) updates that
    sub-config's attributes; any other value replaces the attribute whole.
    """
    if callable(overrides) and not isinstance(overrides, Mapping):
        result = overrides(hf_config)
        if result is None:
            raise InvalidOptionError(
                "hf_overrides", overrides, detail="the callable returned None instead of the config"
            )
        return result
    _merge(hf_config, overrides)
    return hf_config


def _merge(target: Any, overrides: Mapping[str, Any]) -> None:
    from transformers import PretrainedConfig

    for key, value in overrides.items():
        current = getattr(target, key, None)
        if isinstance(value, Mapping) and isinstance(current, PretrainedConfig):
            _merge(current, value)
        else:
            setattr(target, key, value)
