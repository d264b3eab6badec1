"""modelport-transformers: the backend serves what transformers implements, native wins under auto."""

from __future__ import annotations

import pytest
import torch

import modelport
from modelport.errors import UnsupportedArchitectureError
from modelport.plugins import PluginHost
from modelport_transformers.model import TransformersModel


@pytest.fixture
def host():
    return PluginHost(allow={"modelport-transformers"}, strict=True)


def _llama_config(**fields):
    from transformers import LlamaConfig

    base = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=50,
        architectures=["LlamaForCausalLM"],
    )
    base.update(fields)
    return LlamaConfig(**base)


def _select(host, config, model_impl="auto"):
    return host.call_first(
        "modelport_select_architecture",
        hf_config=config,
        model_impl=model_impl,
        registry=host.registry,
        config_format="hf",
        options=modelport.LoadOptions(model_impl=model_impl),
    )


def test_serves_an_architecture_transformers_implements(host):
    answer = _select(host, _llama_config(architectures=["GPTNeoXForCausalLM"]))  # core has no native GPT-NeoX
    assert answer.plugin == "modelport-transformers"
    assert answer.value.impl == "transformers"
    assert answer.value.target == "modelport_transformers.model:TransformersModel"
    assert answer.reason == "transformers implements GPTNeoXForCausalLM; no native implementation is registered"


def test_core_native_wins_under_auto_and_the_backend_serves_model_impl_transformers(host):
    auto = _select(host, _llama_config())
    forced = _select(host, _llama_config(), model_impl="transformers")
    assert (auto.plugin, auto.value.impl) == ("modelport.builtin.architectures", "native")
    assert auto.value.target == "modelport.models.llama:LlamaForCausalLM"
    assert (forced.plugin, forced.value.impl) == ("modelport-transformers", "transformers")


def test_steps_aside_for_a_native_implementation_under_auto(host):
    class Native:
        @modelport.hookimpl
        def modelport_register_architectures(self, register):
            register("LlamaForCausalLM", "somewhere:NativeLlama", impl="native")

    with host.plugin(Native(), "native-llama"):
        auto = _select(host, _llama_config())
        forced = _select(host, _llama_config(), model_impl="transformers")
    assert (auto.plugin, auto.value.target) == ("modelport.builtin.architectures", "somewhere:NativeLlama")
    assert (forced.plugin, forced.value.impl) == ("modelport-transformers", "transformers")


def test_does_not_answer_for_native_or_unknown_architectures(host):
    native = _select(host, _llama_config(), model_impl="native")
    assert (native.plugin, native.value.impl) == ("modelport.builtin.architectures", "native")
    assert _select(host, _llama_config(architectures=["NoSuchModelForCausalLM"])).value is None


def test_model_loads_weights_and_reports_missing_and_unexpected():
    config = _llama_config()
    reference = TransformersModel.from_config(config, dtype="float32", device="cpu")
    state = {k: v.clone() for k, v in reference.module.state_dict().items()}
    dropped = "model.layers.0.mlp.up_proj.weight"
    del state[dropped]
    state["model.extra.weight"] = torch.zeros(2)
    model = TransformersModel.from_config(config, dtype="float32", device="cpu")
    report = model.load_weights(state.items())
    assert report.missing == (dropped,)
    assert report.unexpected == ("model.extra.weight",)
    assert model.module.state_dict()["model.embed_tokens.weight"].equal(state["model.embed_tokens.weight"])


def test_end_to_end_logits_equal_transformers(tiny_model, monkeypatch):
    pytest.importorskip("modelport_hf", reason="the end-to-end path needs modelport-hf to read the folder")
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("MODELPORT_PLUGINS", "modelport-hf,modelport-transformers")
    modelport.plugins.reset_host()
    folder = tiny_model()
    loaded = modelport.load(str(folder), dtype="float32", model_impl="transformers")
    assert loaded.resolved.model_impl == "transformers"
    assert loaded.weights.missing == () and loaded.weights.unexpected == ()
    ids = loaded.tokenizer("The quick brown fox", return_tensors="pt").input_ids
    expected = AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits
    # Equal to float32 rounding: float32 linear layers run on core's kernel (oneDNN), not MKL's sgemm.
    assert (loaded.model.forward(ids) - expected).abs().max() < 1e-5


def test_native_only_without_native_implementation_names_the_option(tiny_model, monkeypatch):
    pytest.importorskip("modelport_hf", reason="needs modelport-hf to read the folder")
    monkeypatch.setenv("MODELPORT_PLUGINS", "modelport-hf,modelport-transformers")
    modelport.plugins.reset_host()
    folder = tiny_model(architectures=["GPTNeoXForCausalLM"], weights=None)  # core has no native GPT-NeoX
    with pytest.raises(UnsupportedArchitectureError) as info:
        modelport.resolve(str(folder), model_impl="native")
    assert "GPTNeoXForCausalLM" in str(info.value) and "try model_impl='transformers'" in str(info.value)


def test_backend_keeps_the_model_protocol_and_agrees_with_the_native_model(tiny_model, monkeypatch):
    """One SequenceBatch of prefills, then batched decodes: the backend agrees with transformers and the native."""
    pytest.importorskip("modelport_hf", reason="needs modelport-hf to read the folder")
    from modelport.models.protocol import CausalLM, SequenceBatch

    monkeypatch.setenv("MODELPORT_PLUGINS", "modelport-hf,modelport-transformers")
    modelport.plugins.reset_host()
    folder = tiny_model(architecture="mistral", tokenizer=False, sliding_window=4)
    backend = modelport.load(str(folder), dtype="float32", model_impl="transformers", skip_tokenizer_init=True).model
    native = modelport.load(str(folder), dtype="float32", model_impl="native", skip_tokenizer_init=True).model
    assert isinstance(backend, CausalLM) and isinstance(native, CausalLM)
    prompts = [torch.arange(3, 9), torch.arange(20, 31), torch.arange(40, 43)]
    lengths = [len(p) for p in prompts]
    tables = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    caches = {m: m.new_kv_cache(12, 4) for m in (backend, native)}
    prefill = SequenceBatch(
        torch.cat(prompts), torch.cat([torch.arange(n) for n in lengths]), lengths, [0, 0, 0], tables, all_logits=True
    )
    got = {m: [m.forward(prefill, caches[m])] for m in caches}
    for step in range(3):
        decode = SequenceBatch(
            torch.tensor([5, 6, 7]),
            torch.tensor([n + step for n in lengths]),
            [1, 1, 1],
            [n + step for n in lengths],
            tables,
        )
        for m in caches:
            got[m].append(m.forward(decode, caches[m]))
    expected = [backend.forward(p[None])[0] for p in prompts]
    assert (got[backend][0] - torch.cat(expected)).abs().max() < 1e-5
    for mine, theirs in zip(got[native], got[backend], strict=True):
        assert mine.shape == theirs.shape and (mine - theirs).abs().max() < 1e-4


def test_the_cpu_executor_runs_each_step_as_one_forward_of_the_module():
    """Core and this plugin alone: continuous batching over a GPT-2, one module forward per executor step."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from modelport.executor import CPUExecutor, ExecutorSettings
    from modelport.sampling import SamplingParams

    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=80, initializer_range=0.1)
    config.architectures = ["GPT2LMHeadModel"]
    torch.manual_seed(0)
    reference = GPT2LMHeadModel(config).eval()
    reference.generation_config.eos_token_id = None
    model = TransformersModel.from_config(config, dtype="float32", device="cpu")
    report = model.load_weights(reference.state_dict().items())
    assert report.missing == () and report.unexpected == () and model.batched
    forwards = []
    model.module.register_forward_hook(lambda module, args, output: forwards.append(1))
    settings = ExecutorSettings(max_num_seqs=2, max_num_batched_tokens=5, block_size=4)
    executor = CPUExecutor(model, None, max_model_len=64, vocab_size=80, settings=settings)
    prompts = [[3, 14, 15, 9, 26, 5], [35, 8], [9, 7, 9, 3]]
    outputs = executor.generate(prompts, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    with torch.no_grad():
        want = [
            reference.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False)[0, len(p) :].tolist()
            for p in prompts
        ]
    assert [o.outputs[0].token_ids for o in outputs] == want
    assert len(forwards) == executor.steps < sum(len(p) + 6 for p in prompts) // 2


def test_building_leaves_the_callers_config_alone_and_a_plain_forward_soft_caps_like_transformers():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=64,
        vocab_size=50,
        sliding_window=3,
        architectures=["Gemma2ForCausalLM"],
    )
    before = config._attn_implementation
    model = TransformersModel.from_config(config, dtype="float32", device="cpu")
    assert config._attn_implementation == before and model.batched
    torch.manual_seed(0)
    reference = Gemma2ForCausalLM(config).eval()
    model.load_weights(reference.state_dict().items())
    ids = torch.tensor([[4, 8, 15, 16, 23, 42, 7]])
    with torch.no_grad():
        assert (model.forward(ids) - reference(ids).logits).abs().max() < 1e-5


def test_a_batch_the_cache_cannot_hold_fails_with_a_message_naming_the_sequence():
    from transformers import GPT2Config

    from modelport.errors import ModelportError
    from modelport.models.protocol import SequenceBatch

    config = GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=32, vocab_size=20)
    config.architectures = ["GPT2LMHeadModel"]
    model = TransformersModel.from_config(config, dtype="float32", device="cpu")
    cache = model.new_kv_cache(4, 2)
    short_table = SequenceBatch(torch.arange(5), torch.arange(5), [2, 3], [0, 0], [[0], [1]])
    with pytest.raises(ModelportError, match="sequence 1: a block table of 1 block"):
        model.forward(short_table, cache)
    outside = SequenceBatch(torch.arange(2), torch.arange(2), [2], [0], [[7]])
    with pytest.raises(ModelportError, match="outside the cache's 4"):
        model.forward(outside, cache)
    assert cache.layers == {}  # nothing was written
