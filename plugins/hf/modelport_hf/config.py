"""Reading config.json into a ``transformers.PretrainedConfig``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from modelport.config_checks import check_json_size, parse_json_bytes
from modelport.errors import InvalidConfigError, RemoteCodeRequiredError
from modelport.options import LoadOptions
from modelport.registry import Registry
from modelport.types import Source

_LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
_FIELD_IN_MESSAGE = re.compile(r"for field '([^']+)'")


def read_config_json(source: Source, name: str = "config.json") -> dict[str, Any]:
    """Read and validate a JSON config file from ``source``.

    Raises:
        InvalidConfigError: an empty file, a Git LFS pointer, invalid JSON (with
            line and column), or JSON that is not an object.
    """
    path = source.fetch(name)
    where = str(path)
    check_json_size(path)  # the size cap (MODELPORT_MAX_JSON_BYTES), before reading
    raw = path.read_bytes()
    if not raw.strip():
        raise InvalidConfigError(where, "the file is empty")
    if raw.startswith(_LFS_POINTER_PREFIX):
        raise InvalidConfigError(
            where, "the file is a Git LFS pointer, not the config itself (run `git lfs pull` in the clone)"
        )
    data = parse_json_bytes(raw, where)  # bad UTF-8 or JSON, nested too deep: InvalidConfigError
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
        except Exception as exc:  # whatever the class raises, the user must learn which file and field
            raise _rejected(where, registered.__name__, exc, data) from exc

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
    folder = source.fetch("config.json").parent
    try:
        if remote_config and options.trust_remote_code:
            config = _remote_config_class(source, str(remote_config)).from_dict(data)
            config._name_or_path = str(folder)
        else:
            # Built from the dict already read (and overridden), so model_type overrides choose the class.
            from transformers.models.auto.configuration_auto import CONFIG_MAPPING

            config = CONFIG_MAPPING[model_type].from_dict(data)
            config._name_or_path = str(folder)
    except Exception as exc:  # transformers' config classes raise many types; all mean "this file is wrong"
        raise _rejected(where, "transformers", exc, data) from exc
    return config


def _remote_config_class(source: Source, reference: str) -> Any:
    """The config class ``reference`` (``module.Class``) from the repository's own code, as the user allowed.

    The code comes from the source's code source (``code_revision``) when it
    has one. Every top-level ``.py`` file is fetched first, since a module may
    import its siblings; then transformers' dynamic-module loader imports it.
    """
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    code_source = getattr(source, "code_source", None)
    code = code_source() if callable(code_source) else source
    modules = [f for f in code.list_files() if f.endswith(".py") and "/" not in f]
    wanted = reference.split("--")[-1].split(".")[0] + ".py"
    if wanted not in modules:
        raise InvalidConfigError(
            code.location,
            f"it names module {wanted}, which the repository does not have",
            field="auto_map.AutoConfig",
            value=reference,
        )
    fetched = code.fetch_many(modules)
    return get_class_from_dynamic_module(reference, str(fetched[wanted].parent))


def _rejected(where: str, by: str, exc: Exception, data: dict[str, Any]) -> InvalidConfigError:
    """An :class:`InvalidConfigError` for a config class that refused the file, naming the field when known."""
    # transformers validates configs as strict dataclasses; their errors name the field only in the message.
    match = _FIELD_IN_MESSAGE.search(str(exc))
    field = match.group(1) if match else None
    root = exc.__cause__ or exc
    detail = f"{by} could not build the config: {type(root).__name__}: {root}"
    if isinstance(field, str):
        value = data.get(field)
        if value is None:  # the field may sit in a nested dict (MPT's attn_config.attn_type)
            for key, nested in data.items():
                if isinstance(nested, dict) and field in nested:
                    field, value = f"{key}.{field}", nested[field]
                    break
        return InvalidConfigError(where, detail, field=field, value=value)
    # transformers' message names no field ("'<' not supported between 'str' and 'int'"): modelport's own
    # checks of sizes and RoPE values, run on the raw file, name the first value of the wrong type.
    from types import SimpleNamespace

    from modelport.config_checks import check_config_values

    try:
        check_config_values(SimpleNamespace(**{k: v for k, v in data.items() if isinstance(k, str)}))
    except InvalidConfigError as found:
        return InvalidConfigError(where, detail, field=found.field, value=found.value)
    return InvalidConfigError(where, detail)
