"""The plugin author's contract: what hooks receive, format dtypes, the tokenizer protocol, full logprobs."""

from __future__ import annotations

import json
import math
import re

import pytest

import modelport
from modelport import hookimpl
from modelport.cli import main
from modelport.errors import PluginError, UnsupportedArchitectureError
from modelport.testing import check_tokenizer, make_tokenizer, registered_plugin


class Recorder:
    """Answers nothing, records the config_format every hook that takes one was given."""

    def __init__(self):
        self.seen = {}

    @hookimpl(tryfirst=True)
    def modelport_select_architecture(self, config_format):
        self.seen["select_architecture"] = config_format

    @hookimpl(tryfirst=True)
    def modelport_resolve_tokenizer(self, config_format, hf_config):
        self.seen["resolve_tokenizer"] = (config_format, hf_config.model_type)

    @hookimpl(tryfirst=True)
    def modelport_load_tokenizer(self, spec, config_format, hf_config):
        self.seen["load_tokenizer"] = (config_format, hf_config.vocab_size)

    @hookimpl(tryfirst=True)
    def modelport_iter_weights(self, weights, config_format):
        self.seen["iter_weights"] = config_format


def test_hooks_that_need_it_receive_the_config_format_and_the_config(toy_native, toy_model):
    recorder = Recorder()
    with registered_plugin(recorder, "recorder", host=toy_native):
        modelport.load(str(toy_model()), host=toy_native, load_format="dummy")
    assert recorder.seen == {
        "select_architecture": "toy",
        "resolve_tokenizer": ("toy", "llama"),
        "load_tokenizer": ("toy", 100),
        "iter_weights": "toy",
    }


class Float32Format:
    """A format whose models run in float32 unless the user asks otherwise (as llama2.c's would)."""

    @hookimpl
    def modelport_register_config_formats(self, register):
        register("toy32", "toy.json, float32 models", default_dtype="float32")

    @hookimpl
    def modelport_parse_config(self, source, config_format):
        if config_format != "toy32":
            return None
        from transformers import LlamaConfig

        return LlamaConfig(**json.loads(source.fetch("toy.json").read_text()))


def test_a_format_states_its_default_dtype(toy_native, toy_model):
    folder = toy_model()
    with registered_plugin(Float32Format(), "toy32", host=toy_native):
        resolved = modelport.resolve(str(folder), host=toy_native, config_format="toy32")
        assert resolved.dtype == "float32"
        [facts] = [s for s in resolved.trace.steps if s.step == "facts"]
        assert facts.reason.startswith("dtype float32: the 'toy32' format's default;")
        # The user's dtype still wins, and other formats keep the checkpoint rule (float32 -> bfloat16).
        assert modelport.resolve(str(folder), host=toy_native, config_format="toy32", dtype="bfloat16").dtype == (
            "bfloat16"
        )
        assert modelport.resolve(str(folder), host=toy_native).dtype == "bfloat16"


class BadDtypeFormat:
    @hookimpl
    def modelport_register_config_formats(self, register):
        register("toy64", default_dtype="float8")


def test_a_default_dtype_outside_the_list_is_a_plugin_error(modelport_host):
    # The test host is strict: the plugin's failure is raised rather than reported and skipped.
    with pytest.raises(PluginError, match=r"config format 'toy64': default_dtype must be one of float32, float16"):
        with registered_plugin(BadDtypeFormat(), "bad-dtype", host=modelport_host):
            modelport_host.registry.names("config_format")


def test_the_registry_rejects_a_bad_default_dtype_with_a_plugin_error():
    from modelport.registry import Registry

    register = Registry().registrar("config_format", "acme")
    with pytest.raises(PluginError, match=r"plugin 'acme': config format 'x': default_dtype must be one of"):
        register("x", default_dtype="float8")


def test_an_architecture_only_in_auto_map_names_trust_remote_code(toy_native, toy_model, capsys):
    folder = toy_model(
        architectures=["AcmeForCausalLM"], auto_map={"AutoModelForCausalLM": "modeling_acme.AcmeForCausalLM"}
    )
    with pytest.raises(
        UnsupportedArchitectureError, match=r"auto_map: modeling_acme.AcmeForCausalLM.*trust_remote_code=True"
    ):
        modelport.resolve(str(folder), host=toy_native)
    assert main(["inspect", str(folder)]) == 1
    assert "runs only with --trust-remote-code and the Transformers backend" in capsys.readouterr().err


def test_model_impl_transformers_without_the_backend_says_to_install_it(toy_native, toy_model, capsys):
    with pytest.raises(UnsupportedArchitectureError, match="install modelport-transformers"):
        modelport.resolve(str(toy_model()), host=toy_native, model_impl="transformers")
    assert main(["inspect", str(toy_model()), "--model-impl", "transformers"]) == 1
    assert "--model-impl transformers needs the Transformers backend: install modelport-transformers" in (
        capsys.readouterr().err
    )


def test_check_tokenizer_accepts_a_real_tokenizer_and_names_what_breaks_the_protocol(tmp_path):
    tokenizer = make_tokenizer(tmp_path / "tok", vocab_size=300)
    tokenizer.eos_token = "</s>"
    ids = check_tokenizer(tokenizer, "Hello world")
    assert ids == tokenizer.encode("Hello world")

    class NoEos:
        def encode(self, text):
            return [ord(c) for c in text]

        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(i) for i in ids)

    with pytest.raises(AssertionError, match="NoEos lacks eos_token_id, all_special_ids"):
        check_tokenizer(NoEos())

    class Lossy(NoEos):
        eos_token_id = 0
        all_special_ids = (0,)

        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(i) for i in ids if i).upper()

    with pytest.raises(AssertionError, match=r"decode\(encode\('Hello world'\)\) is 'HELLO WORLD'"):
        check_tokenizer(Lossy())
    with pytest.raises(AssertionError, match="lacks chat_template, apply_chat_template"):
        check_tokenizer(Lossy(), chat=True)


def test_logprobs_minus_one_returns_the_whole_distribution(toy, toy_model):
    llm = modelport.LLM(str(toy_model()), host=toy, load_format="dummy", skip_tokenizer_init=True)
    params = modelport.SamplingParams(temperature=0, max_tokens=3, logprobs=-1, ignore_eos=True)
    (output,) = llm.generate([{"prompt_token_ids": [1, 2, 3]}], params)
    completion = output.outputs[0]
    assert completion.text == "" and len(completion.token_ids) == 3
    for token, step in zip(completion.token_ids, completion.logprobs, strict=True):
        assert sorted(step) == list(range(100))  # every token of the vocabulary
        assert math.isclose(sum(math.exp(lp.logprob) for lp in step.values()), 1.0, rel_tol=1e-4)
        assert step[token].rank == 1  # greedy took the most likely
    with pytest.raises(modelport.errors.InvalidOptionError, match="-1 for the whole vocabulary"):
        modelport.SamplingParams(logprobs=-2)


def test_a_given_config_format_whose_files_are_absent_beside_a_single_file_is_not_a_missing_reference(
    toy_native, tmp_path, capsys
):
    model = tmp_path / "m.bin"
    model.write_bytes(b"\0" * 16)
    with pytest.raises(modelport.errors.UnsupportedFormatError) as caught:
        modelport.resolve(str(model), host=toy_native, config_format="toy")
    assert str(caught.value) == (
        f"no supported config format found in {model} (config_format='toy' was given, but its files are not "
        f"there: no file 'toy.json' in {tmp_path}); supported formats: 'toy'"
    )
    assert main(["inspect", str(model), "--config-format", "toy"]) == 1
    assert "(--config-format toy was given, but its files are not there" in capsys.readouterr().err


def test_a_single_file_reference_names_its_file_and_lists_the_files_beside_it(toy_native, toy_model):
    folder = toy_model()
    resolved = modelport.resolve(str(folder / "toy.json"), host=toy_native, load_format="dummy")
    assert resolved.source.primary_file == "toy.json"
    assert resolved.source.location == str(folder / "toy.json")
    assert resolved.source.list_files() == ["toy-tokenizer.txt", "toy.json"]


def test_malformed_prompts_are_invalid_option_errors_naming_the_field_and_value(toy, toy_model):
    import numpy as np

    from modelport.errors import InvalidOptionError

    llm = modelport.LLM(str(toy_model()), host=toy, load_format="dummy", skip_tokenizer_init=True)
    params = modelport.SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    cases = [
        ({"prompt_token_ids": ["a", "b"]}, "invalid value ['a', 'b'] for option 'prompt_token_ids'"),
        ({"prompt_token_ids": [1, 2.5]}, "token ids are integers, not 2.5"),
        ({"prompt_token_ids": [True]}, "token ids are integers, not True"),
        ({"prompt_token_ids": 7}, "token ids are a list of integers"),
        ({"text": "hello"}, 'holds "prompt" (text) or "prompt_token_ids"'),
    ]
    for prompt, message in cases:
        with pytest.raises(InvalidOptionError, match=re.escape(message)):
            llm.generate([prompt], params)
    # integers of other kinds are token ids
    (output,) = llm.generate([{"prompt_token_ids": np.array([1, 2, 3])}], params)
    assert len(output.prompt_token_ids) == 3 and len(output.outputs[0].token_ids) == 1
