"""Hook implementations of modelport-transformers."""

from __future__ import annotations

from typing import Any

from modelport.hookspecs import hookimpl
from modelport.registry import Registry
from modelport.types import ArchitectureChoice, Decision

TARGET = "modelport_transformers.model:TransformersModel"


def _transformers_has(name: str) -> bool:
    # transformers resolves its top-level names lazily; hasattr imports only that model's module.
    import transformers

    try:
        return isinstance(getattr(transformers, name), type)
    except (AttributeError, ImportError, RuntimeError):
        return False


@hookimpl(trylast=True)
def modelport_select_architecture(
    hf_config: Any, model_impl: str, registry: Registry
) -> Decision[ArchitectureChoice] | None:
    """Serve an architecture transformers implements when no native implementation is registered.

    With ``model_impl="auto"`` it steps aside whenever core's registry has a
    native implementation for one of the config's architectures.
    """
    if model_impl not in ("auto", "transformers"):
        return None
    names = list(getattr(hf_config, "architectures", None) or [])
    if model_impl == "auto" and any(e.extra.get("impl") == "native" for n in names for e in registry.architectures(n)):
        return None
    for name in names:
        if _transformers_has(name):
            return Decision(
                ArchitectureChoice(name, "transformers", TARGET),
                f"transformers implements {name} and no native implementation is registered"
                if model_impl == "auto"
                else "model_impl='transformers'",
            )
    return None
