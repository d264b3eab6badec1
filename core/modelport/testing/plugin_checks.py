"""Checks a plugin author runs on an installed plugin: how the host sees it, what loading it imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

from modelport.plugins import PluginHost


def describe_installed(distribution: str) -> dict[str, Any]:
    """The ``modelport plugins --json`` entry of ``distribution``, loaded alone by a strict host.

    Raises:
        modelport.errors.PluginError: the plugin fails to import, validate or register.
        LookupError: no installed distribution provides a ``modelport.plugins`` entry point of that name.
    """
    host = PluginHost(allow={distribution}, strict=True)
    for plugin in host.describe():
        if plugin["name"] == distribution:
            return plugin
    raise LookupError(f"no installed plugin named {distribution!r} (entry-point group modelport.plugins)")


def modules_imported_by_loading(distribution: str, modules: Iterable[str]) -> set[str]:
    """Which of ``modules`` a fresh interpreter has imported after loading ``distribution`` alone.

    A fresh interpreter, because the test process may have imported them already.
    Plugins keep heavy imports (torch, transformers, gguf...) inside hook bodies, so
    this should be empty for ``modelport plugins`` to stay fast.
    """
    code = (
        "import json, sys\n"
        "from modelport.plugins import PluginHost\n"
        f"host = PluginHost(allow={{{distribution!r}}}, strict=True)\n"
        f"assert {distribution!r} in host.plugins, sorted(host.plugins)\n"
        "host.describe()\n"
        f"print(json.dumps(sorted(m for m in {sorted(modules)!r} if m in sys.modules)))\n"
    )
    # The child sees what this process sees, throwaway distributions on sys.path included.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, env=env
    )
    return set(json.loads(result.stdout.strip().splitlines()[-1]))
