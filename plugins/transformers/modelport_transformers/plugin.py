"""Hook implementations of modelport-transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelport.errors import RemoteCodeRequiredError
from modelport.hookspecs import hookimpl
from modelport.registry import Registry
from modelport.types import ArchitectureChoice, Decision

TARGET = "modelport_transformers.model:TransformersModel"
#: The same backend over a model class from the repository's own code (``auto_map``), chosen only
#: with ``trust_remote_code``.
REMOTE_TARGET = "modelport_transformers.model:RemoteCodeModel"


def _transformers_has(name: str) -> bool:
    # transformers resolves its top-level names lazily; hasattr imports only that model's module.
    import transformers

    try:
        return isinstance(getattr(transformers, name), type)
    except (AttributeError, ImportError, RuntimeError):
        return False


def remote_model_class(hf_config: Any) -> str | None:
    """The ``module.Class`` that ``auto_map`` names for ``AutoModelForCausalLM``, if any."""
    auto_map = getattr(hf_config, "auto_map", None)
    entry = auto_map.get("AutoModelForCausalLM") if isinstance(auto_map, dict) else None
    if isinstance(entry, (list, tuple)):
        entry = entry[0] if entry else None
    return entry if isinstance(entry, str) and entry else None


def remote_code_file(reference: str) -> str:
    """The file a ``[repo--]module.Class`` reference's code is in (``modeling_x.py``)."""
    return reference.split("--")[-1].rsplit(".", 1)[0] + ".py"


def _native_verdicts(names: list[str], hf_config: Any, registry: Registry) -> tuple[bool, list[str]]:
    """Whether a native implementation serves one of ``names``, and the reasons of those that decline."""
    from modelport.builtin.architectures import unsupported_reason

    declined = []
    for name in names:
        for entry in registry.architectures(name):
            if entry.extra.get("impl") != "native" or entry.target is None:
                continue
            refusal = unsupported_reason(registry, entry, hf_config)
            if refusal is None:
                return True, []
            declined.append(f"the native {entry.target} declines this config: {refusal}")
    return False, declined


@hookimpl(trylast=True)
def modelport_select_architecture(
    hf_config: Any, model_impl: str, registry: Registry, options: Any
) -> Decision[ArchitectureChoice] | None:
    """Serve an architecture transformers implements when no native implementation serves the config.

    With ``model_impl="auto"`` it steps aside whenever a native implementation
    is registered for one of the config's architectures and does not decline
    the config; when every native one declines (its ``unsupported_reason``),
    it serves the config and its reason quotes theirs. A model class from the
    repository's own code (``auto_map["AutoModelForCausalLM"]``) is chosen only
    with ``trust_remote_code``; without it, a config that only such a class can
    serve raises :class:`~modelport.errors.RemoteCodeRequiredError` naming the file.
    """
    if model_impl not in ("auto", "transformers"):
        return None
    names = list(getattr(hf_config, "architectures", None) or [])
    why = "model_impl='transformers'"
    if model_impl == "auto":
        served, declined = _native_verdicts(names, hf_config, registry)
        if served:
            return None
        why = "; ".join(declined) if declined else "no native implementation is registered"
    remote = remote_model_class(hf_config)
    trusted = bool(getattr(options, "trust_remote_code", False))
    if remote is not None and trusted:
        return Decision(
            ArchitectureChoice(names[0] if names else remote.rsplit(".", 1)[-1], "transformers", REMOTE_TARGET),
            f"trust_remote_code=True: the repository's {remote_code_file(remote)} defines {remote} "
            f"(auto_map.AutoModelForCausalLM); {why}",
        )
    for name in names:
        if _transformers_has(name):
            return Decision(ArchitectureChoice(name, "transformers", TARGET), f"transformers implements {name}; {why}")
    if remote is not None and not any(registry.architectures(name) for name in names):
        folder = getattr(hf_config, "_name_or_path", "") or "the model"
        where = str(Path(folder) / "config.json") if folder != "the model" else folder
        raise RemoteCodeRequiredError(
            where, f"{remote_code_file(remote)}: {remote}", field="auto_map.AutoModelForCausalLM"
        )
    return None
