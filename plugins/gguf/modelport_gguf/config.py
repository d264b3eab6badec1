"""A transformers config from GGUF metadata alone, through the registered architecture tables."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from modelport.errors import InvalidConfigError, UnsupportedArchitectureError
from modelport.registry import Registry
from modelport_gguf.architectures import GGUFArchitecture
from modelport_gguf.header import GGUFHeader

#: Config attributes that must be positive integers.
_COUNTS = {
    "max_position_embeddings",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_kv_heads",
    "head_dim",
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_inner",
    "n_head",
    "num_experts",
    "num_local_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "sliding_window",
    "original_max_position_embeddings",
}
#: Token ids the config carries, from the tokenizer metadata.
_TOKEN_IDS = {"bos_token_id": "bos", "eos_token_id": "eos", "pad_token_id": "padding"}
#: Tensor types that say what dtype the checkpoint is in.
_PLAIN_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def find_table(header: GGUFHeader, registry: Registry) -> tuple[str, GGUFArchitecture, str]:
    """The table for the file's architecture: ``(name, table, registering plugin)``.

    Raises:
        InvalidConfigError: no ``general.architecture``.
        UnsupportedArchitectureError: no table is registered for it (the message lists those that are).
    """
    arch = header.architecture
    if arch is None:
        raise InvalidConfigError(
            str(header.path),
            "no GGUF architecture stated",
            field="general.architecture",
            value=header.get("general.architecture"),
        )
    entry = registry.lookup("gguf_architecture", arch)
    if entry is None or entry.target is None:
        raise UnsupportedArchitectureError(
            [arch],
            "auto",
            registry.names("gguf_architecture"),
            f"no GGUF architecture table for {arch!r} in {header.path}; a plugin adds one through "
            "modelport_register_gguf_architectures",
        )
    table = registry.load(entry.target)
    name, plugin = arch, entry.plugin
    expert_count = header.get(f"{arch}.expert_count", 0)
    if table.with_experts and isinstance(expert_count, int) and expert_count > 0:
        moe = registry.lookup("gguf_architecture", table.with_experts)
        if moe is not None and moe.target is not None:
            name, table, plugin = table.with_experts, registry.load(moe.target), moe.plugin
    if not isinstance(table, GGUFArchitecture):
        raise UnsupportedArchitectureError(
            [arch], "auto", registry.names("gguf_architecture"), f"{entry.target} is not a GGUFArchitecture table"
        )
    return name, table, plugin


def _scalar(header: GGUFHeader, key: str, attr: str) -> Any:
    value = header.metadata[key]
    if not isinstance(value, (int, float, str, bool)):
        # Per-layer arrays (head counts of hybrid models): one value when all layers agree.
        if any(not isinstance(item, (int, float, str, bool)) for item in value):
            raise InvalidConfigError(
                str(header.path), "expected a value or one per layer, not nested arrays", field=key, value="[[...]]"
            )
        values = set(value)
        if len(values) != 1:
            raise InvalidConfigError(
                str(header.path), "per-layer values differ; not supported", field=key, value=list(value)[:8]
            )
        value = values.pop()
    if attr in _COUNTS and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise InvalidConfigError(str(header.path), "expected a positive integer", field=key, value=value)
    return value


def config_values(header: GGUFHeader, table: GGUFArchitecture, arch: str) -> dict[str, Any]:
    """The config attributes the metadata states, through ``table``'s keys (vocab size, RoPE, tokens, ties)."""
    values: dict[str, Any] = dict(table.defaults)
    for suffix, attr in table.config_keys.items():
        key = f"{arch}.{suffix}"
        if key in header.metadata:
            values[attr] = _scalar(header, key, attr)
    vocab_attr = "vocab_size"
    if vocab_attr not in values:
        tokens = header.get("tokenizer.ggml.tokens")
        embed = next((t for t in header.tensors if t.name == "token_embd.weight"), None)
        if embed is not None:
            values[vocab_attr] = embed.shape[0]
        elif isinstance(tokens, list) and tokens:
            values[vocab_attr] = len(tokens)
    scaling = header.get(f"{arch}.rope.scaling.type")
    factor = header.get(f"{arch}.rope.scaling.factor")
    if isinstance(scaling, str) and scaling not in ("none", "") and isinstance(factor, (int, float)) and factor > 0:
        rope: dict[str, Any] = {"rope_type": scaling, "factor": float(factor)}
        original = header.get(f"{arch}.rope.scaling.original_context_length")
        if isinstance(original, int) and original > 0:
            rope["original_max_position_embeddings"] = original
        values["rope_scaling"] = rope
    for attr, token in _TOKEN_IDS.items():
        token_id = header.get(f"tokenizer.ggml.{token}_token_id")
        if isinstance(token_id, int) and not isinstance(token_id, bool):
            values[attr] = token_id
    if header.tensors:
        names = {t.name for t in header.tensors}
        values["tie_word_embeddings"] = "output.weight" not in names
        types = {t.type_name for t in header.tensors if len(t.shape) >= 2}
        if len(types) == 1 and next(iter(types)) in _PLAIN_DTYPES:
            values["dtype"] = _PLAIN_DTYPES[next(iter(types))]
    return values


def build_config(
    header: GGUFHeader, registry: Registry, overrides: Mapping[str, Any] | None = None
) -> tuple[Any, str, str]:
    """``(config, table name, plugin)``: the metadata through the file's architecture table into a config.

    The config class is the one registered for the table's ``model_type``, else
    transformers' own. Scalar ``hf_overrides`` are applied by the pipeline afterwards.
    """
    import transformers

    arch = header.architecture or ""
    name, table, plugin = find_table(header, registry)
    values = config_values(header, table, arch)
    cls = registry.config_class(table.model_type)
    try:
        if cls is None:
            config = transformers.AutoConfig.for_model(table.model_type, **values)
        else:
            config = cls(**values)
    except Exception as exc:  # transformers 5 validates through huggingface_hub's StrictDataclassError too
        raise _not_a_config(header, table, arch, values, exc) from exc
    config.architectures = [table.architecture]
    return config, name, plugin


_FIELD_IN_MESSAGE = re.compile(r"for field '([^']+)'")


def _not_a_config(
    header: GGUFHeader, table: GGUFArchitecture, arch: str, values: Mapping[str, Any], exc: Exception
) -> InvalidConfigError:
    """The error for metadata the config class refused: naming the GGUF key (and value) behind the field, if known.

    transformers' strict config classes name the field (``rms_norm_eps``) in
    their message; the key the metadata stated it under
    (``llama.attention.layer_norm_rms_epsilon``) is what the user can find in
    the file. Otherwise ``general.architecture`` is named, as the table it chose.
    """
    detail = f"the metadata does not make a {table.model_type} config ({type(exc).__name__}: {exc})"
    match = _FIELD_IN_MESSAGE.search(str(exc))
    attr = match.group(1) if match else None
    for suffix, name in table.config_keys.items():
        key = f"{arch}.{suffix}"
        if name == attr and key in header.metadata:
            return InvalidConfigError(str(header.path), detail, field=key, value=header.metadata[key])
    if attr is not None and attr in values:
        return InvalidConfigError(str(header.path), detail, field=attr, value=values[attr])
    return InvalidConfigError(str(header.path), detail, field="general.architecture", value=arch)
