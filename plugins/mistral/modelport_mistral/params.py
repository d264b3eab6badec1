"""``params.json`` to a ``transformers.PretrainedConfig``, as vLLM 0.32 adapts it.

The mapping (Mistral key -> Hugging Face attribute):

============================  ==========================================================
``dim``                       ``hidden_size``
``n_layers``                  ``num_hidden_layers``
``head_dim``                  ``head_dim`` (``dim // n_heads`` when absent)
``hidden_dim``                ``intermediate_size``
``n_heads``                   ``num_attention_heads``
``n_kv_heads``                ``num_key_value_heads`` (``n_heads`` when absent)
``norm_eps``                  ``rms_norm_eps``
``vocab_size``                ``vocab_size``
``rope_theta``                ``rope_parameters.rope_theta`` (``rope_type`` ``default``)
``activation``                ``hidden_act`` (``silu`` when absent)
``tied_embeddings``           ``tie_word_embeddings`` (``False`` when absent)
``max_position_embeddings``   ``max_position_embeddings``; when absent, config.json's
                              beside it, else 128000 (vLLM's default)
``max_seq_len``               ``max_seq_len`` (``max_position_embeddings`` when absent)
``sliding_window``            ``sliding_window`` and ``layer_types`` (an int: every layer
                              slides; a list: a per-layer pattern repeated over the
                              layers, ``null`` for full attention)
``moe``                       ``num_local_experts``, ``num_experts_per_tok``:
                              ``MixtralForCausalLM``
``yarn``                      ``rope_parameters`` of ``rope_type`` ``yarn`` (``factor``,
                              ``original_max_position_embeddings``, ``beta`` ->
                              ``beta_fast``, ``alpha`` -> ``beta_slow``, ``apply_scale:
                              false`` -> ``attention_factor`` 1)
``llama_4_scaling``           kept as it is (``original_max_position_embeddings`` and
                              ``beta`` required)
``quantization``              ``quantization_config`` (``fp8_e4m3`` -> ``fp8``,
                              ``compressed-tensors`` passed through)
``vision_encoder``,           a ``pixtral`` config: ``text_config`` (the rest) and
``multimodal``                ``vision_config``; ``PixtralForConditionalGeneration``
============================  ==========================================================

Where modelport differs from vLLM, on purpose: the text config is
transformers' ``MistralConfig`` (``MixtralConfig`` with ``moe``), so
``model_type`` is ``mistral``/``mixtral`` rather than vLLM's generic
``transformer``, and native and Transformers implementations both accept
it. Keys not in the table are kept on the config as attributes (as vLLM keeps
them) and listed by :func:`adapt_params`, so the trace can name them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelport.errors import InvalidConfigError

#: vLLM's default context length for a params.json that states none.
DEFAULT_MAX_POSITION_EMBEDDINGS = 128_000

_RENAMED = {
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "head_dim": "head_dim",
    "hidden_dim": "intermediate_size",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "norm_eps": "rms_norm_eps",
    "vocab_size": "vocab_size",
}
_REQUIRED = ("dim", "n_layers", "hidden_dim", "n_heads", "vocab_size")
#: Every params.json key the adaptation reads; anything else is kept and reported.
KNOWN_KEYS = frozenset(
    {
        *_RENAMED,
        "rope_theta",
        "activation",
        "tied_embeddings",
        "max_position_embeddings",
        "max_seq_len",
        "sliding_window",
        "moe",
        "yarn",
        "llama_4_scaling",
        "quantization",
        "vision_encoder",
        "multimodal",
        "model_type",
        "dtype",
    }
)
_YARN_KEYS = {
    "factor": ("factor", float),
    "original_max_position_embeddings": ("original_max_position_embeddings", int),
    "beta": ("beta_fast", float),
    "alpha": ("beta_slow", float),
}


def _int(params: Mapping[str, Any], key: str, where: str, *, positive: bool = True) -> int:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int) or (positive and value <= 0):
        raise InvalidConfigError(where, "expected a positive integer", field=key, value=value)
    return value


def adapt_params(
    params: Mapping[str, Any], where: str, *, hf_max_position_embeddings: int | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The Hugging Face config fields for ``params`` and the params.json keys the mapping does not know.

    Args:
        params: the parsed params.json.
        where: the file, for error messages.
        hf_max_position_embeddings: ``max_position_embeddings`` of a config.json beside it, if any.

    Returns:
        ``(fields, unknown)``: ``fields`` has ``architectures``, the text config's
        fields and, for vision models, ``vision_config``; ``unknown`` lists the keys
        kept as they are.

    Raises:
        InvalidConfigError: a missing or malformed field, naming it and its value.
    """
    for key in _REQUIRED:
        if key not in params:
            raise InvalidConfigError(where, "a required field is missing", field=key)
        _int(params, key, where)
    fields: dict[str, Any] = {}
    unknown = sorted(k for k in params if k not in KNOWN_KEYS)
    for key in unknown:
        fields[key] = params[key]
    for key, name in _RENAMED.items():
        if key in params and params[key] is not None:
            if key == "norm_eps":
                if isinstance(params[key], bool) or not isinstance(params[key], (int, float)) or params[key] <= 0:
                    raise InvalidConfigError(where, "expected a positive number", field=key, value=params[key])
                fields[name] = float(params[key])
            else:
                fields[name] = _int(params, key, where)
    fields.setdefault("num_key_value_heads", fields["num_attention_heads"])
    fields.setdefault("head_dim", fields["hidden_size"] // fields["num_attention_heads"])
    fields["hidden_act"] = params.get("activation", "silu")
    fields["tie_word_embeddings"] = bool(params.get("tied_embeddings", False))
    if params.get("dtype") is not None:
        fields["dtype"] = params["dtype"]

    max_pos = params.get("max_position_embeddings")
    if max_pos is None:
        max_pos = hf_max_position_embeddings or DEFAULT_MAX_POSITION_EMBEDDINGS
    elif isinstance(max_pos, bool) or not isinstance(max_pos, int) or max_pos <= 0:
        raise InvalidConfigError(where, "expected a positive integer", field="max_position_embeddings", value=max_pos)
    fields["max_position_embeddings"] = max_pos
    max_seq_len = params.get("max_seq_len", max_pos)
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len <= 0:
        raise InvalidConfigError(where, "expected a positive integer", field="max_seq_len", value=max_seq_len)
    fields["max_seq_len"] = max_seq_len

    theta = params.get("rope_theta", 10000.0)
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
        raise InvalidConfigError(where, "expected a positive number", field="rope_theta", value=theta)
    fields["rope_parameters"] = {"rope_type": "default", "rope_theta": float(theta)}
    if params.get("yarn"):
        fields["rope_parameters"] = _yarn(params["yarn"], float(theta), where)

    fields.update(_sliding_window(params.get("sliding_window"), fields["num_hidden_layers"], where))

    if params.get("llama_4_scaling"):
        scaling = params["llama_4_scaling"]
        if not isinstance(scaling, Mapping):
            raise InvalidConfigError(where, "expected an object", field="llama_4_scaling", value=scaling)
        for key in ("original_max_position_embeddings", "beta"):
            if key not in scaling:
                raise InvalidConfigError(where, "a required field is missing", field=f"llama_4_scaling.{key}")
        fields["llama_4_scaling"] = dict(scaling)

    if params.get("quantization"):
        fields["quantization_config"] = _quantization(params["quantization"], where)

    moe = params.get("moe")
    if moe:
        if not isinstance(moe, Mapping):
            raise InvalidConfigError(where, "expected an object", field="moe", value=moe)
        shared = moe.get("num_shared_experts")
        if shared is not None and (isinstance(shared, bool) or not isinstance(shared, int) or shared < 0):
            raise InvalidConfigError(
                where, "expected a non-negative integer", field="moe.num_shared_experts", value=shared
            )
        if shared:
            raise InvalidConfigError(
                where,
                "shared experts (Mistral Large 3, a DeepSeek-V3 layout) are not supported by modelport-mistral",
                field="moe.num_shared_experts",
                value=moe["num_shared_experts"],
            )
        for key in ("num_experts", "num_experts_per_tok"):
            if key not in moe:
                raise InvalidConfigError(where, "a required field is missing", field=f"moe.{key}")
            _int(moe, key, f"{where} (moe)")
        fields["num_local_experts"] = moe["num_experts"]
        fields["num_experts_per_tok"] = moe["num_experts_per_tok"]
        rest = {k: v for k, v in moe.items() if k not in ("num_experts", "num_experts_per_tok")}
        if rest:
            fields["moe"] = rest
            unknown += [f"moe.{k}" for k in sorted(rest)]
        fields["architectures"] = ["MixtralForCausalLM"]
    else:
        fields["architectures"] = ["MistralForCausalLM"]

    vision = (
        (params.get("multimodal") or {}).get("vision_encoder_args")
        if isinstance(params.get("multimodal"), Mapping)
        else None
    )
    vision = vision or params.get("vision_encoder")
    if vision:
        if not isinstance(vision, Mapping):
            raise InvalidConfigError(where, "expected an object", field="vision_encoder", value=vision)
        fields["vision_config"] = dict(vision)
    return fields, unknown


def _yarn(yarn: Any, theta: float, where: str) -> dict[str, Any]:
    if not isinstance(yarn, Mapping):
        raise InvalidConfigError(where, "expected an object", field="yarn", value=yarn)
    rope: dict[str, Any] = {"rope_type": "yarn", "mscale_all_dim": 1, "rope_theta": theta}
    for key, value in yarn.items():
        if key == "apply_scale":
            if not value:
                rope["attention_factor"] = 1.0
            continue
        if key not in _YARN_KEYS:
            raise InvalidConfigError(
                where, f"unknown yarn field (known: {', '.join([*_YARN_KEYS, 'apply_scale'])})", field=f"yarn.{key}"
            )
        name, cast = _YARN_KEYS[key]
        try:
            rope[name] = cast(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidConfigError(where, "expected a number", field=f"yarn.{key}", value=value) from exc
    return rope


def _sliding_window(window: Any, layers: int, where: str) -> dict[str, Any]:
    if window is None:
        return {"sliding_window": None}
    if isinstance(window, bool):
        raise InvalidConfigError(where, "expected an integer or a list", field="sliding_window", value=window)
    if isinstance(window, int):
        if window <= 0:
            raise InvalidConfigError(where, "expected a positive integer", field="sliding_window", value=window)
        return {"sliding_window": window, "layer_types": ["sliding_attention"] * layers}
    if isinstance(window, list) and window:
        if any(w is not None and (isinstance(w, bool) or not isinstance(w, int) or w <= 0) for w in window):
            raise InvalidConfigError(
                where, "a per-layer list holds positive window sizes and nulls", field="sliding_window", value=window
            )
        sizes = {w for w in window if w is not None}
        if len(sizes) > 1:
            raise InvalidConfigError(
                where,
                "a per-layer list holds one window size and nulls (full attention)",
                field="sliding_window",
                value=window,
            )
        if layers % len(window):
            raise InvalidConfigError(
                where, f"a per-layer pattern must divide n_layers ({layers})", field="sliding_window", value=window
            )
        pattern = window * (layers // len(window))
        return {
            "sliding_window": next(iter(sizes), None),
            "layer_types": ["full_attention" if w is None else "sliding_attention" for w in pattern],
        }
    raise InvalidConfigError(where, "expected an integer or a list", field="sliding_window", value=window)


def _quantization(quantization: Any, where: str) -> dict[str, Any]:
    if not isinstance(quantization, Mapping):
        raise InvalidConfigError(where, "expected an object", field="quantization", value=quantization)
    if quantization.get("qformat_weight") == "fp8_e4m3":
        scheme = quantization.get("qscheme_act")
        if scheme not in ("NO_SCALES", "TENSOR", None):
            raise InvalidConfigError(
                where, "supported: NO_SCALES, TENSOR", field="quantization.qscheme_act", value=scheme
            )
        return {"quant_method": "fp8", "activation_scheme": "dynamic" if scheme == "NO_SCALES" else "static"}
    method = str(quantization.get("quant_method", "")).lower().replace("_", "-")
    if method == "compressed-tensors":
        return {**quantization, "quant_method": "compressed-tensors"}
    raise InvalidConfigError(
        where,
        "unsupported quantization (supported: qformat_weight fp8_e4m3, quant_method compressed-tensors)",
        field="quantization",
        value=dict(quantization),
    )


def build_config(fields: Mapping[str, Any], folder: str = "") -> Any:
    """The ``transformers`` config for adapted ``fields``: ``MistralConfig``, ``MixtralConfig`` or a pixtral one."""
    import transformers

    text = dict(fields)
    vision = text.pop("vision_config", None)
    quantization = text.get("quantization_config")
    cls = transformers.MixtralConfig if "num_local_experts" in text else transformers.MistralConfig
    if vision is None:
        config = cls(**text)
        config._name_or_path = folder
        return config
    text_config = cls(**{k: v for k, v in text.items() if k != "architectures"})
    config = transformers.PretrainedConfig(
        model_type="pixtral",
        architectures=["PixtralForConditionalGeneration"],
        text_config=text_config,
        vision_config=transformers.PretrainedConfig(**vision),
    )
    if quantization:
        config.quantization_config = quantization
    config._name_or_path = folder
    return config


def config_from_params(
    params: Mapping[str, Any], where: str, *, hf_max_position_embeddings: int | None = None, folder: str = ""
) -> tuple[Any, list[str]]:
    """:func:`adapt_params` then :func:`build_config`; whatever transformers refuses is an ``InvalidConfigError``.

    Returns:
        ``(config, unknown keys)``.
    """
    fields, unknown = adapt_params(params, where, hf_max_position_embeddings=hf_max_position_embeddings)
    try:
        return build_config(fields, folder), unknown
    except Exception as exc:  # transformers' config classes raise many types; all mean "this file is wrong"
        raise InvalidConfigError(
            where, f"transformers could not build the config: {type(exc).__name__}: {exc}"
        ) from exc
