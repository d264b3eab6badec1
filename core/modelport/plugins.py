"""The plugin host: loads plugins, one at a time, and calls their hooks.

Plugins come from the ``modelport.plugins`` entry-point group (the entry-point
name is the distribution name) and from core's own built-in plugins, which are
registered through the same manager. Environment switches:

``MODELPORT_PLUGINS``
    comma-separated allow-list of entry-point plugins (built-ins always load).
    Set but empty: no entry-point plugin loads.
``MODELPORT_DISABLE_PLUGINS``
    comma-separated deny-list; may also name built-ins.
``MODELPORT_STRICT_PLUGINS=1``
    a plugin that fails to import, validate or register raises
    :class:`~modelport.errors.PluginError` instead of being reported and skipped.
``MODELPORT_TRACE=1``
    log every hook call (implementations asked, who answered, the result) on
    the ``modelport.hooks`` logger, to stderr unless logging is configured.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pluggy

from modelport import hookspecs
from modelport.errors import PluginError
from modelport.options import env_flag
from modelport.registry import Registry
from modelport.types import Decision

ENTRY_POINT_GROUP = "modelport.plugins"
#: The distribution shown for plugins registered with :meth:`PluginHost.register` from code.
CODE_REGISTERED = "(registered in code)"
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("modelport.builtin.local", "modelport.builtin.local"),
    ("modelport.builtin.architectures", "modelport.builtin.architectures"),
    ("modelport.builtin.native", "modelport.builtin.native"),
    ("modelport.builtin.cpu", "modelport.builtin.cpu"),
    ("modelport.builtin.distributed", "modelport.builtin.distributed"),
)

hook_log = logging.getLogger("modelport.hooks")


class PluginWarning(UserWarning):
    """A plugin was reported and skipped (see :class:`PluginFailure`)."""


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin.

    Attributes:
        name: the plugin's name (its distribution name, or ``modelport.builtin.*``).
        distribution: the distribution that provides it.
        version: that distribution's version.
        builtin: whether it is part of core.
        hooks: the hook names it implements, sorted.
    """

    name: str
    distribution: str
    version: str
    builtin: bool
    hooks: tuple[str, ...]


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that was reported and skipped.

    Attributes:
        name: the entry-point (or given) name.
        distribution: the distribution, if known.
        version: its version, if known.
        error: what went wrong, one line.
    """

    name: str
    distribution: str
    version: str
    error: str


@dataclass(frozen=True)
class Answer:
    """The outcome of a "choose one" hook call.

    Attributes:
        value: the winning result (unwrapped from :class:`~modelport.types.Decision`), or ``None``.
        plugin: the plugin that answered, or ``None`` if none did.
        reason: the plugin's reason, or a description of how the answer was chosen.
        asked: plugins asked, in order, up to the one that answered.
        seconds: time spent in the call.
    """

    value: Any
    plugin: str | None
    reason: str
    asked: tuple[str, ...] = ()
    seconds: float = 0.0


@dataclass
class _Settings:
    allow: set[str] | None
    deny: set[str]
    strict: bool
    trace: bool


def _split(value: str) -> set[str]:
    return {part.strip() for part in value.replace(" ", ",").split(",") if part.strip()}


def _settings_from_env() -> _Settings:
    allow_env = os.environ.get("MODELPORT_PLUGINS")
    return _Settings(
        allow=_split(allow_env) if allow_env is not None else None,
        deny=_split(os.environ.get("MODELPORT_DISABLE_PLUGINS", "")),
        strict=env_flag("MODELPORT_STRICT_PLUGINS"),
        trace=env_flag("MODELPORT_TRACE"),
    )


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class PluginHost:
    """A pluggy manager with modelport's loading rules and call helpers.

    Build one with :meth:`from_environment` (what :func:`get_host` does) or
    directly, for full control (integrators, tests).

    Args:
        load_entry_points: discover plugins from the ``modelport.plugins`` group.
        allow: names of entry-point plugins allowed to load (``None``: all).
        deny: names of plugins (built-ins too) that must not load.
        strict: make any plugin failure fatal.
        trace: log every hook call.
    """

    load_entry_points: bool = True
    allow: set[str] | None = None
    deny: set[str] = field(default_factory=set)
    strict: bool = False
    trace: bool = False

    def __post_init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self._registry: Registry | None = None
        if self.trace and not hook_log.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("modelport.hooks: %(message)s"))
            hook_log.addHandler(handler)
            hook_log.setLevel(logging.DEBUG)
        for name, module in BUILTIN_PLUGINS:
            if name in self.deny:
                continue
            self.register(importlib.import_module(module), name, builtin=True)
        if self.load_entry_points:
            self._load_entry_points()

    @classmethod
    def from_environment(cls) -> PluginHost:
        """A host configured by the ``MODELPORT_*`` environment variables."""
        s = _settings_from_env()
        return cls(load_entry_points=True, allow=s.allow, deny=s.deny, strict=s.strict, trace=s.trace)

    # --- loading ------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else ep.name
            version = ep.dist.version if ep.dist is not None else ""
            if ep.name in self.deny or (self.allow is not None and ep.name not in self.allow):
                continue
            if self.pm.has_plugin(ep.name):
                self._fail(ep.name, dist, version, "another plugin with this name is already loaded")
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # any import-time failure of a third party is reported, not fatal
                self._fail(ep.name, dist, version, f"import failed: {type(exc).__name__}: {exc}")
                continue
            self.register(plugin, ep.name, distribution=dist, version=version)

    def _fail(self, name: str, distribution: str, version: str, error: str) -> None:
        failure = PluginFailure(name, distribution, version, error)
        origin = "registered in code" if distribution == CODE_REGISTERED else f"distribution {distribution} {version}"
        origin = origin.rstrip()
        if self.strict:
            raise PluginError(name, f"could not be loaded: {error} ({origin})")
        self.failures.append(failure)
        warnings.warn(f"modelport: plugin {name!r} ({origin}) was skipped: {error}", PluginWarning, stacklevel=3)

    def register(
        self,
        plugin: object,
        name: str,
        *,
        distribution: str | None = None,
        version: str | None = None,
        builtin: bool = False,
    ) -> bool:
        """Register one plugin object (a module or any object with hook implementations).

        Its hook implementations are validated at once: an implementation
        whose name is no hook spec (a misspelling) or whose arguments the spec
        lacks makes the plugin fail. A failing plugin is reported with a
        :class:`PluginWarning` and skipped (``False`` is returned), or raises
        :class:`~modelport.errors.PluginError` in strict mode and for built-ins.
        """
        if distribution is None:
            distribution, version = _distribution_of(plugin, builtin)
        version = version or ""
        impls = _hookimpls_of(plugin)
        unknown = [hook for hook, _ in impls if not hook.startswith("modelport_") or not hasattr(hookspecs, hook)]
        if unknown:
            hints = []
            for hook in unknown:
                close = difflib.get_close_matches(hook, _spec_names(), n=1)
                hints.append(f"{hook!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            self._reject(name, distribution, version, f"unknown hook {', '.join(hints)}", builtin)
            return False
        wrappers = [hook for hook, opts in impls if opts.get("wrapper") or opts.get("hookwrapper")]
        if wrappers:
            self._reject(
                name,
                distribution,
                version,
                f"hook wrappers are not supported ({', '.join(wrappers)}): modelport calls implementations "
                "one by one to record which plugin answered",
                builtin,
            )
            return False
        try:
            self.pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            self._reject(name, distribution, version, str(exc), builtin)
            return False
        hooks = tuple(sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or []))
        self.plugins[name] = PluginInfo(name, distribution, version, builtin, hooks)
        self._registry = None
        return True

    def _reject(self, name: str, distribution: str, version: str, error: str, builtin: bool) -> None:
        if builtin:
            raise PluginError(name, f"could not be loaded: {error}")
        self._fail(name, distribution, version, error)

    def unregister(self, name: str) -> None:
        """Remove a plugin by name (no error if absent)."""
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        self._registry = None

    @contextmanager
    def plugin(self, plugin: object, name: str | None = None) -> Iterator[str]:
        """Register ``plugin`` for the duration of a ``with`` block; yields its name."""
        plugin_name = name or getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin):x}"
        if not self.register(plugin, plugin_name, distribution=CODE_REGISTERED, version=""):
            raise PluginError(plugin_name, self.failures[-1].error if self.failures else "rejected")
        try:
            yield plugin_name
        finally:
            self.unregister(plugin_name)

    # --- calling ------------------------------------------------------------------

    def _impls(self, hook_name: str) -> list[Any]:
        caller = getattr(self.pm.hook, hook_name)
        # pluggy calls implementations last-registered first, tryfirst before plain before trylast;
        # get_hookimpls() holds them in the reverse of that order.
        return [i for i in reversed(caller.get_hookimpls()) if not (i.hookwrapper or i.wrapper)]

    def call_first(self, hook_name: str, **kwargs: Any) -> Answer:
        """Call a "choose one" hook: ask implementations in pluggy's order, stop at the first answer.

        Unlike ``pm.hook.X(...)``, this knows which plugin answered, which is
        what the trace records.
        """
        start = time.perf_counter()
        asked: list[str] = []
        for impl in self._impls(hook_name):
            asked.append(impl.plugin_name)
            result = impl.function(*[kwargs[a] for a in impl.argnames])
            reason = ""
            if isinstance(result, Decision):
                result, reason = result.value, result.reason
            if result is None:  # a bare None or a Decision(None, ...) both pass
                continue
            answer = Answer(result, impl.plugin_name, reason, tuple(asked), time.perf_counter() - start)
            if self.trace:
                hook_log.debug("%s asked %s -> %s answered %s", hook_name, asked, impl.plugin_name, _short(result))
            return answer
        if self.trace:
            hook_log.debug("%s asked %s -> no answer", hook_name, asked)
        return Answer(None, None, "no plugin answered", tuple(asked), time.perf_counter() - start)

    @property
    def registry(self) -> Registry:
        """The registry, built on first use by calling every register hook."""
        if self._registry is None:
            registry = Registry()
            for hook_name, kind in hookspecs.REGISTER_HOOKS.items():
                impls = self._impls(hook_name)
                for impl in impls:
                    mark = registry.mark()
                    try:
                        impl.function(registry.registrar(kind, impl.plugin_name))
                    except Exception as exc:  # one plugin's bad registration must not break the others
                        registry.rollback(mark)
                        info = self.plugins.get(impl.plugin_name)
                        detail = f"{hook_name} failed: {type(exc).__name__}: {exc}"
                        if info is None or info.builtin:
                            raise PluginError(impl.plugin_name, detail) from exc
                        self._fail(info.name, info.distribution, info.version, detail)
                if self.trace:
                    hook_log.debug(
                        "%s asked %s -> registered %s",
                        hook_name,
                        [i.plugin_name for i in impls],
                        registry.names(kind),
                    )
            self._registry = registry
        return self._registry

    def describe(self) -> list[dict[str, Any]]:
        """Every plugin with what it implements and registered (the ``plugins --json`` shape)."""
        registry = self.registry
        out = []
        for info in self.plugins.values():
            registered: dict[str, list[str]] = {}
            for entry in registry.by_plugin(info.name):
                registered.setdefault(entry.kind, []).append(entry.name)
            out.append(
                {
                    "name": info.name,
                    "distribution": info.distribution,
                    "version": info.version,
                    "builtin": info.builtin,
                    "hooks": list(info.hooks),
                    "registered": {kind: sorted(set(names)) for kind, names in sorted(registered.items())},
                }
            )
        return out


def _hookimpls_of(plugin: object) -> list[tuple[str, dict[str, Any]]]:
    """``(hook name, options)`` of every attribute marked with ``@hookimpl`` (``specname`` honoured)."""
    found = []
    for attr in dir(plugin):
        if attr.startswith("__"):
            continue
        try:
            value = getattr(plugin, attr)
        except Exception:  # a property that raises is no hook implementation
            continue
        opts = getattr(value, hookspecs.PROJECT + "_impl", None) if callable(value) else None
        if isinstance(opts, dict):
            found.append((opts.get("specname") or attr, opts))
    return found


def _spec_names() -> list[str]:
    return [n for n in dir(hookspecs) if n.startswith("modelport_")]


def _distribution_of(plugin: object, builtin: bool) -> tuple[str, str]:
    if builtin:
        return "modelport", _version("modelport")
    return CODE_REGISTERED, ""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


_default_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide host, built from the environment on first use."""
    global _default_host
    if _default_host is None:
        _default_host = PluginHost.from_environment()
    return _default_host


def reset_host() -> None:
    """Forget the process-wide host so the next :func:`get_host` re-reads the environment."""
    global _default_host
    _default_host = None
