"""The registry: everything plugins registered through "register many" hooks.

It is built once per :class:`~modelport.plugins.PluginHost` (rebuilt when a
plugin is added or removed) by calling every register hook, one plugin at a
time, with a ``register`` callback that records the plugin's name. Entries that
name code hold ``"module:Class"`` strings, imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from modelport.errors import PluginError
from modelport.types import ConfigPatch, RegistryEntry

#: The dtypes a config format may register as its models' default (``register(name, default_dtype=...)``).
FORMAT_DTYPES = ("float32", "float16", "bfloat16")

#: The ``impl`` that registers an architecture alias: ``register(alias, "OtherName", impl="alias")``.
ALIAS_IMPL = "alias"
#: The registry kind of those aliases.
ALIAS_KIND = "architecture_alias"


def import_target(target: str) -> Any:
    """Import ``"package.module:Attribute"`` and return the attribute.

    Raises:
        PluginError: the module or attribute does not exist, or the string is malformed.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(target, "expected a 'module:Class' string")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(target, f"cannot import module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise PluginError(target, f"module {module_name!r} has no attribute {attr!r}") from exc
    return obj


def _check_target(plugin: str, kind: str, name: str, target: object) -> str:
    if not isinstance(target, str) or target.count(":") != 1 or target.startswith(":") or target.endswith(":"):
        raise PluginError(plugin, f"{kind} {name!r}: target must be a 'module:Class' string, got {target!r}")
    return target


class Registry:
    """What every plugin registered, by kind, in registration order."""

    def __init__(self) -> None:
        self.entries: list[RegistryEntry] = []
        self._patches: list[tuple[ConfigPatch, str]] = []
        self._imported: dict[str, Any] = {}

    # --- building -----------------------------------------------------------------

    def registrar(self, kind: str, plugin: str) -> Any:
        """The ``register`` callback handed to ``plugin``'s register hook for ``kind``."""
        if kind == "config_patch":

            def register_patch(patch: ConfigPatch) -> None:
                if not isinstance(patch, ConfigPatch):
                    raise PluginError(plugin, f"register() for config patches takes a ConfigPatch, got {patch!r}")
                if not callable(patch.apply):
                    raise PluginError(plugin, f"config patch {patch.name!r}: apply is not callable")
                self._patches.append((patch, plugin))
                self.entries.append(
                    RegistryEntry(
                        kind,
                        patch.name,
                        plugin,
                        None,
                        patch.description,
                        {"phase": int(patch.phase), "architectures": list(patch.architectures)},
                    )
                )

            return register_patch
        if kind == "gguf_architecture":

            def register_gguf_architecture(gguf_name: str, target: str, description: str = "") -> None:
                _check_target(plugin, "GGUF architecture", gguf_name, target)
                self.entries.append(RegistryEntry(kind, gguf_name, plugin, target, description))

            return register_gguf_architecture
        if kind == "config_class":

            def register_config_class(model_type: str, target: str, description: str = "") -> None:
                _check_target(plugin, "config class", model_type, target)
                self.entries.append(RegistryEntry(kind, model_type, plugin, target, description))

            return register_config_class
        if kind == "architecture":

            def register_architecture(
                name: str, target: str, impl: str = "native", description: str = "", unsupported: str | None = None
            ) -> None:
                if impl == ALIAS_IMPL:
                    # Another name for an architecture (vLLM's legacy and alias names): target is that name.
                    if not isinstance(target, str) or not target or ":" in target or target == name:
                        raise PluginError(
                            plugin,
                            f"architecture alias {name!r}: target must be another architecture name, got {target!r}",
                        )
                    self.entries.append(
                        RegistryEntry(ALIAS_KIND, name, plugin, None, description, {"alias_of": target})
                    )
                    return
                _check_target(plugin, "architecture", name, target)
                extra: dict[str, Any] = {"impl": impl}
                if unsupported is not None:
                    # "module:function" saying why the implementation declines a config (None: it serves it).
                    extra["unsupported"] = _check_target(plugin, "architecture check", name, unsupported)
                self.entries.append(RegistryEntry(kind, name, plugin, target, description, extra))

            return register_architecture

        if kind == "distributed_backend":

            def register_distributed_backend(name: str, target: str, description: str = "") -> None:
                if not isinstance(name, str) or not name:
                    raise PluginError(plugin, f"distributed backend name must be a non-empty string, got {name!r}")
                _check_target(plugin, "distributed backend", name, target)
                self.entries.append(RegistryEntry(kind, name, plugin, target, description))

            return register_distributed_backend

        if kind == "executor":

            def register_executor(name: str, description: str = "", available: str | None = None) -> None:
                if not isinstance(name, str) or not name:
                    raise PluginError(plugin, f"executor name must be a non-empty string, got {name!r}")
                extra: dict[str, Any] = {}
                if available is not None:
                    # "module:function" taking a device string, returning why it cannot be used (None: it can).
                    extra["available"] = _check_target(plugin, "executor availability check", name, available)
                self.entries.append(RegistryEntry(kind, name, plugin, None, description, extra))

            return register_executor

        if kind == "config_format":

            def register_config_format(name: str, description: str = "", default_dtype: str | None = None) -> None:
                if not isinstance(name, str) or not name:
                    raise PluginError(plugin, f"config_format name must be a non-empty string, got {name!r}")
                if default_dtype not in (None, *FORMAT_DTYPES):
                    raise PluginError(
                        plugin,
                        f"config format {name!r}: default_dtype must be one of {', '.join(FORMAT_DTYPES)} "
                        f"or None, got {default_dtype!r}",
                    )
                extra = {"default_dtype": default_dtype} if default_dtype else {}
                self.entries.append(RegistryEntry(kind, name, plugin, None, description, extra))

            return register_config_format

        def register_name(name: str, description: str = "") -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(plugin, f"{kind} name must be a non-empty string, got {name!r}")
            self.entries.append(RegistryEntry(kind, name, plugin, None, description))

        return register_name

    def mark(self) -> tuple[int, int]:
        """A point to :meth:`rollback` to (used to drop a failing plugin's partial registrations)."""
        return len(self.entries), len(self._patches)

    def rollback(self, mark: tuple[int, int]) -> None:
        """Forget every registration made since ``mark``."""
        del self.entries[mark[0] :]
        del self._patches[mark[1] :]

    # --- queries ------------------------------------------------------------------

    def of_kind(self, kind: str) -> list[RegistryEntry]:
        """Entries of one kind, in registration order."""
        return [e for e in self.entries if e.kind == kind]

    def names(self, kind: str) -> list[str]:
        """Distinct names of one kind, sorted."""
        return sorted({e.name for e in self.entries if e.kind == kind})

    def by_plugin(self, plugin: str) -> list[RegistryEntry]:
        """Everything ``plugin`` registered."""
        return [e for e in self.entries if e.plugin == plugin]

    def lookup(self, kind: str, name: str) -> RegistryEntry | None:
        """The first entry of ``kind`` named ``name`` (first registered wins), or ``None``."""
        for e in self.entries:
            if e.kind == kind and e.name == name:
                return e
        return None

    def architectures(self, name: str) -> list[RegistryEntry]:
        """Every implementation registered for architecture ``name``.

        A name with no implementation of its own that is registered as an alias
        (``register(name, other_name, impl="alias")``) lists the implementations of the name
        it stands for (see :meth:`alias_of`).
        """
        found = [e for e in self.entries if e.kind == "architecture" and e.name == name]
        canonical = self.alias_of(name) if not found else None
        if canonical is not None:
            return [e for e in self.entries if e.kind == "architecture" and e.name == canonical]
        return found

    def alias_of(self, name: str) -> str | None:
        """The architecture ``name`` stands for, when it is a registered alias without an implementation of its own."""
        if any(e.kind == "architecture" and e.name == name for e in self.entries):
            return None
        entry = self.lookup(ALIAS_KIND, name)
        return None if entry is None else str(entry.extra["alias_of"])

    def config_class(self, model_type: str) -> type | None:
        """The config class registered for ``model_type``, imported now, or ``None``."""
        entry = self.lookup("config_class", model_type)
        if entry is None or entry.target is None:
            return None
        cls: type = self.load(entry.target)
        return cls

    def load(self, target: str) -> Any:
        """Import a ``"module:Class"`` target once and cache it."""
        if target not in self._imported:
            self._imported[target] = import_target(target)
        return self._imported[target]

    def patches(self) -> list[tuple[ConfigPatch, str]]:
        """``(patch, plugin)`` pairs in run order: by phase, then registration order."""
        return sorted(self._patches, key=lambda item: int(item[0].phase))

    def extend(self, entries: Iterable[RegistryEntry]) -> None:
        """Add entries directly (used by tests and integrators building a registry by hand)."""
        self.entries.extend(entries)
