"""Reading config.json into a ``transformers.PretrainedConfig``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from modelport.errors import InvalidConfigError, RemoteCodeRequiredError
from modelport.options import LoadOptions
from modelport.registry import Registry
from modelport.types import Source

_LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"


def read_config_json(source: Source, name: str = "config.json") -> dict[str, Any]:
    """Read and validate a JSON config file from ``source``.

    Raises:
        InvalidConfigError: an empty file, a Git LFS pointer, invalid JSON (with
            line and column), or JSON that is not an object.
    """
    path = source.fetch(name)
    where = str(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise InvalidConfigError(where, "the file is empty")
    if raw.startswith(_LFS_POINTER_PREFIX):
        raise InvalidConfigError(
            where, "the file is a Git LFS pointer, not the config itself (run `git lfs pull` in the clone)"
        )
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidConfigError(where, f"not UTF-8 text (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise InvalidConfigError(where, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise InvalidConfigError(where, f"expected a JSON object, found {type(data).__name__}")
    return data


def _known_to_transformers(model_type: str) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def parse_config(source: Source, options: LoadOptions, registry: Registry) -> Any:
    """The config of ``source``: registry by ``model_type`` first, then ``AutoConfig``.

    Top-level scalar ``hf_overrides`` (``model_type``, ``architectures``...) are
    applied to the raw JSON first, so an override can choose the config class;
    the pipeline applies all overrides to the built config afterwards.
    """
    data = read_config_json(source)
    where = str(source.fetch("config.json"))
    overrides = options.hf_overrides
    if isinstance(overrides, Mapping):
        data.update({k: v for k, v in overrides.items() if not isinstance(v, Mapping)})
    model_type = data.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise InvalidConfigError(where, "model_type must be a string", field="model_type", value=model_type)

    registered = registry.config_class(model_type) if model_type else None
    if registered is not None:
        try:
            return registered.from_dict(data)
        except (TypeError, ValueError, KeyError) as exc:
            raise InvalidConfigError(where, f"{registered.__name__} rejected it: {exc}") from exc

    auto_map = data.get("auto_map") or {}
    remote_config = auto_map.get("AutoConfig") if isinstance(auto_map, dict) else None
    if remote_config and not options.trust_remote_code and not (model_type and _known_to_transformers(model_type)):
        raise RemoteCodeRequiredError(where, str(remote_config), field="auto_map.AutoConfig")
    if not model_type and not remote_config:
        raise InvalidConfigError(
            where,
            "no model_type and no auto_map, so no config class can be chosen "
            "(set it with hf_overrides={'model_type': ...})",
            field="model_type",
        )
    if model_type and not remote_config and not _known_to_transformers(model_type):
        import transformers

        raise InvalidConfigError(
            where,
            f"model_type is not known to transformers {transformers.__version__}, and no installed plugin "
            f"registered a config class for it (registered: {', '.join(registry.names('config_class')) or 'none'})",
            field="model_type",
            value=model_type,
        )
    from transformers import AutoConfig

    folder = source.fetch("config.json").parent
    try:
        config = AutoConfig.from_pretrained(
            folder,
            trust_remote_code=options.trust_remote_code,
            revision=options.code_revision or options.revision if options.trust_remote_code else None,
        )
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
        raise InvalidConfigError(
            where, f"transformers could not build the config: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(overrides, Mapping):
        # AutoConfig re-read the file, so carry the scalar overrides over explicitly.
        for key, value in overrides.items():
            if not isinstance(value, Mapping):
                setattr(config, key, value)
    return config
