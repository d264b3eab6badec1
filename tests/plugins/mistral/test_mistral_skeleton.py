"""modelport-mistral is a skeleton: it installs, is discovered through its entry point, and registers nothing."""

from __future__ import annotations

import importlib.metadata

from modelport.testing import describe_installed, modules_imported_by_loading

DISTRIBUTION = "modelport-mistral"


def test_mistral_plugin_is_discovered_with_its_distribution_and_version_and_registers_nothing() -> None:
    described = describe_installed(DISTRIBUTION)
    assert described["distribution"] == DISTRIBUTION
    assert described["version"] == importlib.metadata.version(DISTRIBUTION)
    assert described["builtin"] is False
    assert (described["hooks"], described["registered"]) == ([], {})


def test_loading_the_mistral_plugin_does_not_import_mistral_common() -> None:
    assert modules_imported_by_loading(DISTRIBUTION, ["mistral_common"]) == set()
