"""modelport-modelscope installs, is discovered, implements classify_reference only, and imports modelscope lazily."""

from __future__ import annotations

import importlib.metadata

from modelport.testing import describe_installed, modules_imported_by_loading

DISTRIBUTION = "modelport-modelscope"


def test_the_plugin_is_discovered_with_its_distribution_version_and_one_hook():
    described = describe_installed(DISTRIBUTION)
    assert described["distribution"] == DISTRIBUTION
    assert described["version"] == importlib.metadata.version(DISTRIBUTION)
    assert described["builtin"] is False
    assert described["hooks"] == ["modelport_classify_reference"]
    assert described["registered"] == {}


def test_loading_the_plugin_imports_neither_modelscope_nor_huggingface_hub():
    heavy = ["modelscope", "modelscope_hub", "huggingface_hub", "transformers", "torch", "requests"]
    assert modules_imported_by_loading(DISTRIBUTION, heavy) == set()
