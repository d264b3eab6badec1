"""modelport-gguf is discovered through its entry point, says what it implements and registers, and loads cheaply."""

from __future__ import annotations

import importlib.metadata

from modelport.testing import describe_installed, modules_imported_by_loading

DISTRIBUTION = "modelport-gguf"


def test_the_plugin_is_discovered_with_its_hooks_and_registrations():
    described = describe_installed(DISTRIBUTION)
    assert (described["distribution"], described["builtin"]) == (DISTRIBUTION, False)
    assert described["version"] == importlib.metadata.version(DISTRIBUTION)
    assert set(described["hooks"]) >= {
        "modelport_classify_reference",
        "modelport_detect_config_format",
        "modelport_parse_config",
        "modelport_register_gguf_architectures",
        "modelport_resolve_tokenizer",
        "modelport_load_tokenizer",
        "modelport_select_weight_files",
        "modelport_iter_weights",
    }
    registered = described["registered"]
    assert (registered["config_format"], registered["tokenizer_mode"], registered["load_format"]) == (
        ["gguf"],
        ["gguf"],
        ["gguf"],
    )
    assert set(registered["gguf_architecture"]) == {
        "falcon",
        "gemma2",
        "gemma3",
        "gpt2",
        "llama",
        "mistral",
        "mixtral",
        "phi3",
        "qwen2",
        "qwen2moe",
        "qwen3",
        "qwen3moe",
        "starcoder2",
    }


def test_loading_the_plugin_imports_no_heavy_library():
    heavy = ["gguf", "torch", "transformers", "numpy", "tokenizers"]
    assert modules_imported_by_loading(DISTRIBUTION, heavy) == set()
