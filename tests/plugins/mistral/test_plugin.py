"""modelport-mistral as the host sees it: what it registers, and that loading it stays cheap."""

from __future__ import annotations

import importlib.metadata

from modelport.testing import describe_installed, modules_imported_by_loading

DISTRIBUTION = "modelport-mistral"


def test_the_plugin_is_discovered_and_registers_the_mistral_format_tokenizer_mode_and_load_format():
    described = describe_installed(DISTRIBUTION)
    assert described["distribution"] == DISTRIBUTION
    assert described["version"] == importlib.metadata.version(DISTRIBUTION)
    assert described["builtin"] is False
    assert described["registered"] == {
        "config_format": ["mistral"],
        "tokenizer_mode": ["mistral"],
        "load_format": ["mistral"],
    }
    assert set(described["hooks"]) == {
        "modelport_register_config_formats",
        "modelport_detect_config_format",
        "modelport_parse_config",
        "modelport_register_tokenizer_modes",
        "modelport_resolve_tokenizer",
        "modelport_load_tokenizer",
        "modelport_register_load_formats",
        "modelport_select_weight_files",
        "modelport_iter_weights",
    }


def test_loading_the_plugin_imports_neither_mistral_common_nor_torch_nor_transformers():
    heavy = ["mistral_common", "torch", "transformers", "safetensors", "sentencepiece", "tiktoken"]
    assert modules_imported_by_loading(DISTRIBUTION, heavy) == set()
