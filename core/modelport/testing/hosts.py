"""Plugin hosts for tests: isolated from whatever happens to be installed."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from modelport.plugins import PluginHost, get_host


def isolated_host(plugins: Iterable[str] = (), *, strict: bool = True) -> PluginHost:
    """A host with core's built-ins and only the entry-point plugins named in ``plugins``.

    ``strict`` (default on) makes a broken allowed plugin fail the test loudly.
    """
    return PluginHost(load_entry_points=True, allow=set(plugins), strict=strict)


@contextmanager
def registered_plugin(plugin: object, name: str | None = None, host: PluginHost | None = None) -> Iterator[str]:
    """Register ``plugin`` (a module, class or object with hook implementations) for one block.

    Defaults to the process-wide host, which the pytest plugin isolates per test.
    """
    with (host or get_host()).plugin(plugin, name) as plugin_name:
        yield plugin_name
