"""Configs the native models decline and transformers cannot build either: typed errors, not KeyErrors.

A Llama config with an activation or a RoPE type no one implements is handed
by ``model_impl="auto"`` to the Transformers backend, whose layers look the
name up in a table and raised ``KeyError`` deep inside transformers. The
user must get an :class:`~modelport.errors.InvalidConfigError` naming the
folder, the field and the value instead.
"""

from __future__ import annotations

import json

import pytest

import modelport
from modelport.errors import InvalidConfigError

pytest.importorskip("modelport_hf", reason="reading a model folder needs modelport-hf")


#: Only modelport-hf and modelport-transformers answer (conftest.py).
pytestmark = pytest.mark.usefixtures("hf_and_backend")


@pytest.mark.parametrize("model_impl", ["auto", "transformers"])
@pytest.mark.parametrize(
    ("change", "field", "value"),
    [
        ({"hidden_act": "no_such_activation"}, "hidden_act", "no_such_activation"),
        ({"rope_parameters": {"rope_type": "no_such_rope", "rope_theta": 10000.0}}, "rope_parameters.rope_type", None),
    ],
)
def test_a_name_transformers_does_not_know_is_an_invalid_config_naming_field_and_value(
    tiny_model, model_impl, change, field, value
):
    folder = tiny_model(tokenizer=False, num_hidden_layers=1)
    config = json.loads((folder / "config.json").read_text())
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidConfigError) as info:
        modelport.load(str(folder), skip_tokenizer_init=True, dtype="float32", model_impl=model_impl)
    value = value or "no_such_rope"
    assert info.value.field == field and info.value.value == value
    assert str(folder) in str(info.value) and "transformers could not build LlamaForCausalLM" in str(info.value)


def test_a_native_config_error_names_the_folder_not_the_config_class(tiny_model):
    folder = tiny_model(tokenizer=False, num_hidden_layers=1)
    config = json.loads((folder / "config.json").read_text())
    config["num_key_value_heads"] = 3  # 4 heads: transformers accepts it, the native Llama does not
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidConfigError) as info:
        modelport.load(str(folder), skip_tokenizer_init=True, dtype="float32", model_impl="native")
    assert info.value.file == str(folder) and info.value.field == "num_key_value_heads" and info.value.value == 3
