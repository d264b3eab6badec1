"""Tests for modelport-toml-config, through the modelport pytest plugin.

pyproject.toml lists this plugin and modelport-hf in ``modelport_plugins``:
every test gets a fresh host that loads exactly those, besides core's built-ins
(the weights step comes from modelport-hf; the architecture, LlamaForCausalLM,
is core's native one).
"""

import modelport
import pytest
from modelport.errors import InvalidConfigError
from modelport.testing import registered_plugin
from transformers import LlamaConfig

MODEL_TOML = """\
model_type = "llama"
architectures = ["LlamaForCausalLM"]
hidden_size = 64
intermediate_size = 128
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
vocab_size = 384
max_position_embeddings = 256
"""


def write_model(folder, text=MODEL_TOML):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.toml").write_text(text)
    return folder


def test_the_plugin_registers_the_toml_format(modelport_host):
    assert "modelport-toml-config" in modelport_host.plugins
    assert "toml" in modelport_host.registry.names("config_format")


def test_a_model_toml_folder_resolves_to_its_config(tmp_path):
    folder = write_model(tmp_path / "model")

    resolved = modelport.resolve(str(folder), load_format="dummy", skip_tokenizer_init=True)

    assert resolved.config_format == "toml"
    assert resolved.hf_config.hidden_size == 64
    assert resolved.max_model_len == 256
    assert resolved.architecture.name == "LlamaForCausalLM"
    [config_step] = resolved.trace.find("config")
    assert config_step.plugin == "modelport-toml-config"


def test_config_json_wins_when_both_files_are_present(tiny_model):
    folder = write_model(tiny_model(weights=None, tokenizer=False))

    resolved = modelport.resolve(str(folder), load_format="dummy", skip_tokenizer_init=True)

    assert resolved.config_format == "hf"


def test_invalid_toml_is_reported_with_its_file_and_line(tmp_path):
    folder = write_model(tmp_path / "model", "hidden_size = 64\nvocab_size = \n")

    with pytest.raises(InvalidConfigError, match=r"model\.toml: not valid TOML: .*line 2"):
        modelport.resolve(str(folder), load_format="dummy", skip_tokenizer_init=True)


class TinyLlamaConfig(LlamaConfig):
    model_type = "tiny-llama"


class TinyLlamaConfigs:
    @modelport.hookimpl
    def modelport_register_config_classes(self, register):
        register("tiny-llama", f"{__name__}:TinyLlamaConfig")


def test_a_registered_config_class_serves_its_model_type(tmp_path):
    folder = write_model(tmp_path / "model", MODEL_TOML.replace('"llama"', '"tiny-llama"'))

    with registered_plugin(TinyLlamaConfigs()):
        resolved = modelport.resolve(str(folder), load_format="dummy", skip_tokenizer_init=True)

    assert type(resolved.hf_config) is TinyLlamaConfig
