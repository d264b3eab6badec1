"""Facts derived from a patched config: text config, dtype, context length.

These are format-independent. They read only attributes that every
``transformers.PretrainedConfig`` may carry, so they work for configs that any
plugin produced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelport.errors import InvalidConfigError, InvalidOptionError

#: Config keys that state a context length, most specific first (vLLM's list).
CONTEXT_LENGTH_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)

_DTYPE_ALIASES = {"float": "float32", "half": "float16", "double": "float64"}


def text_config(hf_config: Any) -> Any:
    """The config of the language-model part (the config itself for text-only models)."""
    getter = getattr(hf_config, "get_text_config", None)
    if callable(getter):
        try:
            return getter()
        except (AttributeError, ValueError, TypeError):
            pass
    return hf_config


def checkpoint_dtype(hf_config: Any) -> str | None:
    """The dtype the config says the checkpoint holds, as a name, or ``None``."""
    for attr in ("dtype", "torch_dtype"):
        value = getattr(hf_config, attr, None)
        if value is None:
            continue
        name = str(value).removeprefix("torch.")
        return _DTYPE_ALIASES.get(name, name)
    return None


def resolve_dtype(option: str, hf_config: Any) -> str:
    """``option`` normalised, or with ``auto`` the checkpoint's dtype (float32 when unstated)."""
    if option != "auto":
        return _DTYPE_ALIASES.get(option, option)
    text = text_config(hf_config)
    return checkpoint_dtype(text) or checkpoint_dtype(hf_config) or "float32"


def derived_max_model_len(hf_text_config: Any) -> int | None:
    """The smallest context length the config states under any known key, or ``None``."""
    found = []
    for key in CONTEXT_LENGTH_KEYS:
        value = getattr(hf_text_config, key, None)
        if isinstance(value, bool) or value is None:
            continue
        if not isinstance(value, (int, float)) or value <= 0:
            raise InvalidConfigError("config", "context length must be a positive number", field=key, value=value)
        found.append(int(value))
    return min(found) if found else None


def resolve_max_model_len(user_value: int | None, hf_text_config: Any) -> int | None:
    """The user's cap if it fits the model, else the model's own length.

    Raises:
        InvalidOptionError: the user asks for more than the model allows.
    """
    derived = derived_max_model_len(hf_text_config)
    if user_value is None:
        return derived
    if derived is not None and user_value > derived:
        raise InvalidOptionError(
            "max_model_len",
            user_value,
            detail=f"the model allows at most {derived} tokens (from its config)",
        )
    return user_value


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
