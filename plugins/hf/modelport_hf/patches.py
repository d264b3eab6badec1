"""Post-load config patches of modelport-hf, each a registered :class:`~modelport.types.ConfigPatch`.

They run after ``hf_overrides`` (so overridden values are normalised like any
others), in phase order:

1. ``legacy-rope`` (:data:`PatchPhase.LEGACY_ROPE`): every RoPE spelling to
   transformers' current ``rope_parameters`` form, on the config and every
   sub-config.
2. ``attribute-remap`` (:data:`PatchPhase.ATTRIBUTE_REMAP`): attributes that
   engines read under another name (``llm_config`` -> ``text_config``...).
3. ``falcon-refinedweb`` (:data:`PatchPhase.ARCHITECTURE_FIXUP`, for
   ``RWForCausalLM`` only): Falcon's original RefinedWeb configs become
   transformers' ``FalconConfig``, so the Falcon implementation serves them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

from modelport.errors import InvalidConfigError
from modelport.types import ConfigPatch, PatchContext, PatchPhase

#: ``type``/``rope_type`` pairs that name the same thing in old and new spelling.
ROPE_TYPE_ALIASES = {("su", "longrope"), ("longrope", "su"), ("mrope", "default"), ("default", "mrope")}
#: Old RoPE type names and their current ones.
ROPE_TYPE_RENAMES = {"su": "longrope", "mrope": "default"}
#: Legacy attribute names for the RoPE base frequency.
ROPE_THETA_KEYS = ("rope_theta", "rotary_emb_base")
#: Legacy attribute names for the fraction of each head that is rotated.
PARTIAL_ROTARY_KEYS = ("partial_rotary_factor", "rotary_pct", "rotary_emb_fraction")
#: Attributes engines read as ``text_config`` (vLLM remaps ``llm_config``).
TEXT_CONFIG_ALIASES = ("llm_config", "language_config")


def sub_configs(config: Any) -> Iterator[Any]:
    """The config and every nested sub-config, depth first, each once."""
    from transformers import PretrainedConfig

    seen: set[int] = set()
    stack = [config]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for value in list(vars(current).values()):
            if isinstance(value, PretrainedConfig):
                stack.append(value)


def _where(config: Any, context: PatchContext) -> str:
    return f"{context.source.location} ({type(config).__name__})"


def _normalise_rope_dict(
    params: Mapping[str, Any], config: Any, context: PatchContext, *, theta_key_always: bool = False
) -> dict[str, Any]:
    """One set of RoPE parameters in current form.

    ``theta_key_always``: give the set a ``rope_theta`` even where the config
    states none (as ``None``), as transformers' ``standardize_rope_params`` does
    for the one flat set vLLM 0.32 standardises (GPT-J's ``{"rope_type":
    "gptj"}`` becomes ``{"rope_type": "gptj", "rope_theta": None}`` there).
    """
    out = dict(params)
    legacy, current = out.get("type"), out.get("rope_type")
    if legacy is not None and current is not None and legacy != current and (legacy, current) not in ROPE_TYPE_ALIASES:
        raise InvalidConfigError(
            _where(config, context),
            "'type' and 'rope_type' disagree; keep one of them",
            field="rope_scaling",
            value={"type": legacy, "rope_type": current},
        )
    rope_type = current if current is not None else legacy if legacy is not None else "default"
    out["rope_type"] = ROPE_TYPE_RENAMES.get(rope_type, rope_type)
    if "rope_theta" not in out:
        theta = next((getattr(config, k) for k in ROPE_THETA_KEYS if getattr(config, k, None) is not None), None)
        if theta is not None or theta_key_always:
            out["rope_theta"] = theta
    return out


def normalise_rope(config: Any, context: PatchContext) -> Any:
    """Bring every RoPE spelling of ``config`` and its sub-configs to ``rope_parameters``.

    ``rotary_emb_base`` becomes ``rope_theta``; ``rotary_pct`` and
    ``rotary_emb_fraction`` become ``partial_rotary_factor``; a ``rope_scaling``
    dict with ``type`` or ``rope_type`` gets a ``rope_type`` (``su`` ->
    ``longrope``, ``mrope`` -> ``default`` keeping ``mrope_section``). ``type``
    and ``rope_type`` naming different schemes is an error. Per-layer-type
    parameter sets (``{"full_attention": {...}, ...}``) are normalised each.

    Raises:
        InvalidConfigError: naming the config, the field and the conflicting values.
    """
    for part in sub_configs(config):
        fields = vars(part)
        partial = next((fields[k] for k in PARTIAL_ROTARY_KEYS if fields.get(k) is not None), None)
        if partial is not None and fields.get("partial_rotary_factor") is None:
            part.partial_rotary_factor = partial
        params = fields.get("rope_parameters")
        if params is None:
            params = fields.get("rope_scaling")
        if params is None:
            theta = next((fields[k] for k in ROPE_THETA_KEYS if fields.get(k) is not None), None)
            if theta is None:
                continue  # not a RoPE model, or one whose class keeps RoPE elsewhere (ChatGLM's rope_ratio)
            params = {"rope_type": "default"}
        if not isinstance(params, Mapping):
            raise InvalidConfigError(
                _where(part, context), "expected a dict of RoPE parameters", field="rope_parameters", value=params
            )
        params = copy.deepcopy(dict(params))
        if params and all(isinstance(v, Mapping) for v in params.values()):
            normalised: dict[str, Any] = {k: _normalise_rope_dict(v, part, context) for k, v in params.items()}
        else:
            # A stated set gets a rope_theta key even if None, as in vLLM (transformers' standardisation).
            normalised = _normalise_rope_dict(params, part, context, theta_key_always=bool(params))
            if partial is not None and "partial_rotary_factor" not in normalised:
                normalised["partial_rotary_factor"] = partial
        if normalised != fields.get("rope_parameters"):
            part.rope_parameters = normalised
    return config


def remap_attributes(config: Any, context: PatchContext) -> Any:
    """Expose the language model's config as ``text_config`` where a checkpoint names it otherwise."""
    for alias in TEXT_CONFIG_ALIASES:
        value = getattr(config, alias, None)
        if value is not None and getattr(config, "text_config", None) is None:
            config.text_config = value
    return config


def falcon_refinedweb(config: Any, context: PatchContext) -> Any:
    """Turn a RefinedWeb (``RWForCausalLM``) config into transformers' ``FalconConfig``.

    Falcon's first checkpoints shipped their own config and modelling code;
    transformers' Falcon implementation reads the same weights, so the config
    is translated (``n_layer`` -> ``num_hidden_layers``, ``n_head_kv`` ->
    ``num_kv_heads``...) and the architecture renamed to ``FalconForCausalLM``.
    """
    if getattr(config, "model_type", None) not in ("RefinedWeb", "RefinedWebModel"):
        return config
    from transformers import FalconConfig

    return FalconConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_kv_heads=config.n_head_kv,
        layer_norm_epsilon=config.layer_norm_epsilon,
        initializer_range=config.initializer_range,
        use_cache=config.use_cache,
        hidden_dropout=config.hidden_dropout,
        attention_dropout=config.attention_dropout,
        alibi=config.alibi,
        bias=config.bias,
        parallel_attn=config.parallel_attn,
        new_decoder_architecture=config.new_decoder_architecture,
        multi_query=config.multi_query,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        dtype=getattr(config, "dtype", None),
        architectures=["FalconForCausalLM"],
    )


PATCHES = (
    ConfigPatch("legacy-rope", PatchPhase.LEGACY_ROPE, normalise_rope, "legacy RoPE forms to rope_parameters"),
    ConfigPatch(
        "attribute-remap", PatchPhase.ATTRIBUTE_REMAP, remap_attributes, "llm_config/language_config as text_config"
    ),
    ConfigPatch(
        "falcon-refinedweb",
        PatchPhase.ARCHITECTURE_FIXUP,
        falcon_refinedweb,
        "RefinedWeb configs to FalconConfig",
        architectures=("RWForCausalLM",),
    ),
)
