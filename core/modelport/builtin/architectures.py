"""Built-in plugin: pick an implementation from the architecture registry."""

from __future__ import annotations

from typing import Any

from modelport.hookspecs import hookimpl
from modelport.registry import Registry
from modelport.types import ArchitectureChoice, Decision

#: For each ``model_impl`` value, the implementation kinds it accepts, best first.
IMPL_PREFERENCE: dict[str, tuple[str, ...]] = {
    "auto": ("native", "transformers"),
    "native": ("native",),
    "transformers": ("transformers",),
}


@hookimpl(trylast=True)
def modelport_select_architecture(
    hf_config: Any, model_impl: str, registry: Registry
) -> Decision[ArchitectureChoice] | None:
    """The first of ``config.architectures`` with a registered implementation.

    With ``model_impl="auto"`` a native implementation wins over a
    Transformers-backend one; other kinds registered by plugins come last.
    """
    names = list(getattr(hf_config, "architectures", None) or [])
    wanted = IMPL_PREFERENCE.get(model_impl, (model_impl,))
    for name in names:
        entries = registry.architectures(name)
        ranked = sorted(
            (e for e in entries if model_impl == "auto" or e.extra.get("impl") in wanted),
            key=lambda e: wanted.index(e.extra["impl"]) if e.extra.get("impl") in wanted else len(wanted),
        )
        if ranked:
            entry = ranked[0]
            assert entry.target is not None
            impl = str(entry.extra.get("impl", "native"))
            return Decision(
                ArchitectureChoice(name, impl, entry.target, entry.plugin),
                f"registered {impl} implementation for {name} (model_impl={model_impl!r})",
            )
    return None
