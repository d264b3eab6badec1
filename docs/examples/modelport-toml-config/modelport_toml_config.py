"""modelport-toml-config: models whose config is a ``model.toml`` file.

``model.toml`` holds the fields of a transformers config; ``model_type``
chooses the config class, and TOML tables become nested dicts (for example
``[rope_scaling]``). This is the worked example of the modelport plugin guide.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from typing import Any

from modelport import Decision, hookimpl
from modelport.errors import InvalidConfigError

FORMAT = "toml"
CONFIG_FILE = "model.toml"


@hookimpl
def modelport_register_config_formats(register: Callable[..., None]) -> None:
    """Make ``toml`` a valid ``config_format`` and list it in ``modelport plugins``."""
    register(FORMAT, f"{CONFIG_FILE} holding transformers config fields")


# trylast: a folder that has both config.json and model.toml is left to the
# config.json reader, whose file is the one the rest of the ecosystem reads.
@hookimpl(trylast=True)
def modelport_detect_config_format(source: Any) -> Decision[str] | None:
    """Claim folders that hold model.toml, judging by the files and never by the name."""
    if source.primary_file is None and source.exists(CONFIG_FILE):
        return Decision(FORMAT, f"{CONFIG_FILE} present")
    return None


@hookimpl
def modelport_parse_config(source: Any, config_format: str, registry: Any) -> Any:
    """Build the config from model.toml; a config class registered for the model_type wins."""
    if config_format != FORMAT:
        return None
    path = source.fetch(CONFIG_FILE)
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidConfigError(where, f"not valid TOML: {exc}") from exc
    model_type = data.pop("model_type", None)
    if not isinstance(model_type, str) or not model_type:
        raise InvalidConfigError(where, "model_type must be a non-empty string", field="model_type", value=model_type)
    config_class = registry.config_class(model_type) or _transformers_config_class(model_type, where)
    try:
        return config_class(**data)
    except (TypeError, ValueError) as exc:
        raise InvalidConfigError(where, f"{config_class.__name__} rejected it: {exc}") from exc


def _transformers_config_class(model_type: str, where: str) -> Any:
    # Imported here rather than at the top: `modelport plugins` and `--help`
    # import every plugin and must not pay for transformers.
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise InvalidConfigError(
            where,
            "transformers has no config class for this model_type and no plugin registered one",
            field="model_type",
            value=model_type,
        )
    return CONFIG_MAPPING[model_type]
