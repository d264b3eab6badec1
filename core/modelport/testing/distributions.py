"""Throwaway installed distributions, for testing entry-point discovery for real."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PluginDistribution:
    """A distribution written to disk by :func:`make_plugin_distribution`.

    Attributes:
        name: the distribution (and entry-point) name.
        version: its version.
        site: the folder to put on ``sys.path`` (holds the module and the ``.dist-info``).
        module: the top-level module name of the plugin.
    """

    name: str
    version: str
    site: Path
    module: str

    def activate(self) -> None:
        """Put the distribution on ``sys.path`` so ``importlib.metadata`` and imports see it."""
        if str(self.site) not in sys.path:
            sys.path.insert(0, str(self.site))
        importlib.invalidate_caches()

    def deactivate(self) -> None:
        """Take it off ``sys.path`` again and forget its imported module."""
        while str(self.site) in sys.path:
            sys.path.remove(str(self.site))
        for mod in [m for m in sys.modules if m == self.module or m.startswith(self.module + ".")]:
            del sys.modules[mod]
        importlib.invalidate_caches()


def make_plugin_distribution(
    site: str | os.PathLike[str], name: str, code: str, *, version: str = "0.1.0", module: str | None = None
) -> PluginDistribution:
    """Write an installed distribution ``name`` whose ``modelport.plugins`` entry point is ``module``.

    Args:
        site: an empty folder that will play site-packages.
        name: the distribution name; also the entry-point name, as the plugin contract says.
        code: the plugin module's source (dedented); may be deliberately broken.
        version: the distribution's version.
        module: the module name (default: ``name`` with ``-`` as ``_``).

    Call :meth:`PluginDistribution.activate` to make it visible.
    """
    site = Path(site)
    module = module or name.replace("-", "_").replace(".", "_")
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(code))
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist_info / "entry_points.txt").write_text(f"[modelport.plugins]\n{name} = {module}\n")
    (dist_info / "top_level.txt").write_text(module + "\n")
    (dist_info / "RECORD").write_text("")
    return PluginDistribution(name, version, site, module)
