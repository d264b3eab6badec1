"""Options: every option is accepted, every bad name or value is a typed error listing the valid ones."""

from __future__ import annotations

import pytest

import modelport
from modelport.errors import InvalidOptionError, UnknownOptionError
from modelport.options import LoadOptions

OPTIONS_NAMED_IN_THE_ISSUES = {
    "revision",
    "code_revision",
    "token",
    "hf_config_path",
    "config_format",
    "trust_remote_code",
    "hf_overrides",
    "tokenizer",
    "tokenizer_revision",
    "tokenizer_mode",
    "skip_tokenizer_init",
    "load_format",
    "model_impl",
    "dtype",
    "device",
    "download_dir",
    "offline",
    "max_model_len",
    "hub",  # issue 10: hf or modelscope
    "tensor_parallel_size",  # issue 14
    "distributed_executor_backend",  # issue 14: mp, ray or a registered backend
}


def test_options_cover_every_option_the_issues_name():
    assert set(LoadOptions.names()) == OPTIONS_NAMED_IN_THE_ISSUES


def test_unknown_option_lists_the_valid_ones(toy, toy_model):
    with pytest.raises(UnknownOptionError) as info:
        modelport.resolve(str(toy_model()), revison="main")
    message = str(info.value)
    assert "unknown option 'revison'" in message
    assert "revision" in message and "max_model_len" in message


@pytest.mark.parametrize(
    ("option", "value", "listed"),
    [
        ("model_impl", "vllm", "'auto', 'native', 'transformers'"),
        ("dtype", "fp8", "'bfloat16'"),
        ("hub", "ms", "'hf', 'modelscope'"),
    ],
)
def test_closed_values_list_the_supported_ones(option, value, listed):
    with pytest.raises(InvalidOptionError) as info:
        LoadOptions(**{option: value})
    assert f"invalid value {value!r} for option {option!r}" in str(info.value)
    assert listed in str(info.value)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_model_len", 0),
        ("max_model_len", True),
        ("trust_remote_code", "yes"),
        ("device", "CUDA 0"),
        ("hf_overrides", 3),
        ("revision", ""),
        ("offline", "no"),
    ],
)
def test_wrongly_typed_values_are_rejected(option, value):
    with pytest.raises(InvalidOptionError, match=option):
        LoadOptions(**{option: value})


def test_plugin_extended_values_are_checked_against_the_registry(toy, toy_model):
    with pytest.raises(InvalidOptionError) as info:
        modelport.resolve(str(toy_model()), load_format="tensorizer")
    assert "'load_format'" in str(info.value)
    assert "supported values: 'auto', 'dummy'" in str(info.value)
    with pytest.raises(InvalidOptionError, match="supported values: 'auto', 'toy'"):
        modelport.resolve(str(toy_model()), config_format="gguf")


def test_token_never_appears_in_repr_or_public_dict():
    options = LoadOptions(token="hf_secretvalue123")
    assert "hf_secretvalue123" not in repr(options)
    assert options.to_public_dict()["token"] == "<set>"
    with pytest.raises(InvalidOptionError) as info:
        LoadOptions(token=12345)  # type: ignore[arg-type]
    assert "12345" not in str(info.value)


def test_offline_follows_the_environment_unless_set(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert LoadOptions().is_offline is True
    assert LoadOptions(offline=False).is_offline is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert LoadOptions().is_offline is False


def test_replace_validates_like_the_constructor():
    options = LoadOptions().replace(dtype="bfloat16")
    assert options.dtype == "bfloat16"
    with pytest.raises(UnknownOptionError):
        options.replace(dtyp="float16")
