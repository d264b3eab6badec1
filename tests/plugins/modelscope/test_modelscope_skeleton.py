"""modelport-modelscope is a skeleton: it installs, is discovered through its entry point, and registers nothing."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

from modelport.plugins import PluginHost

DISTRIBUTION = "modelport-modelscope"
HEAVY_MODULE = "modelscope"


def _described(host: PluginHost) -> dict[str, object]:
    return next(plugin for plugin in host.describe() if plugin["name"] == DISTRIBUTION)


def test_modelscope_plugin_is_discovered_through_its_entry_point_with_its_distribution_and_version() -> None:
    host = PluginHost(allow={DISTRIBUTION}, strict=True)

    described = _described(host)

    assert described["distribution"] == DISTRIBUTION
    assert described["version"] == importlib.metadata.version(DISTRIBUTION)
    assert described["builtin"] is False
    assert host.failures == []


def test_modelscope_skeleton_implements_no_hook_and_registers_nothing() -> None:
    described = _described(PluginHost(allow={DISTRIBUTION}, strict=True))

    assert described["hooks"] == []
    assert described["registered"] == {}


def test_loading_the_modelscope_plugin_does_not_import_modelscope() -> None:
    # A fresh interpreter: other tests in this process may have imported modelscope already.
    code = (
        "import sys\n"
        "from modelport.plugins import PluginHost\n"
        f"host = PluginHost(allow={{{DISTRIBUTION!r}}}, strict=True)\n"
        f"assert {DISTRIBUTION!r} in host.plugins, sorted(host.plugins)\n"
        f"print({HEAVY_MODULE!r} in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "False"
