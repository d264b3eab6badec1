"""The backend under ``auto`` when a native class declines a config, Llama parity, and remote-code classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import modelport
from modelport.builtin.native import llama_family_unsupported_reason
from modelport.errors import RemoteCodeRequiredError, UnsupportedArchitectureError
from modelport.models.protocol import SequenceBatch

pytest.importorskip("modelport_hf", reason="reading a model folder needs modelport-hf")


#: Only modelport-hf and modelport-transformers answer (conftest.py).
pytestmark = pytest.mark.usefixtures("hf_and_backend")


def _architecture_step(trace):
    return next(s for s in trace.steps if s.step == "architecture")


def test_a_native_class_that_declines_the_config_hands_it_to_the_backend_under_auto(tiny_model):
    from transformers import AutoModelForCausalLM

    folder = tiny_model(tokenizer=False, hidden_act="gelu_new")  # a Llama with an activation the native lacks
    llm = modelport.LLM(str(folder), dtype="float32", skip_tokenizer_init=True, max_num_seqs=2, block_size=4)
    step = _architecture_step(llm.loaded.trace)
    assert step.plugin == "modelport-transformers"
    assert step.decision.startswith("LlamaForCausalLM (transformers:")
    assert (
        "the native modelport.models.llama:LlamaForCausalLM declines this config: hidden_act 'gelu_new' "
        "is not implemented; supported: silu, swish, gelu, gelu_pytorch_tanh, relu" in step.reason
    )
    assert llm.executor.model.batched
    prompts = [[5, 17, 33, 8], [40, 2 + 9, 70], [9, 41, 50, 12, 77]]
    params = modelport.SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    reference.generation_config.eos_token_id = None
    with torch.no_grad():
        want = [
            reference.generate(torch.tensor([p]), max_new_tokens=5, do_sample=False)[0, len(p) :].tolist()
            for p in prompts
        ]
    assert got == want


def test_model_impl_native_fails_with_the_reason_the_native_class_declines(tiny_model):
    folder = tiny_model(tokenizer=False, weights=None, hidden_act="gelu_new")
    with pytest.raises(UnsupportedArchitectureError) as info:
        modelport.resolve(str(folder), model_impl="native", skip_tokenizer_init=True)
    message = str(info.value)
    assert "modelport.models.llama:LlamaForCausalLM declines this config: hidden_act 'gelu_new'" in message
    assert "model_impl='auto' lets the Transformers backend (modelport-transformers) serve it" in message


def test_a_config_the_native_class_serves_stays_native_under_auto(tiny_model):
    resolved = modelport.resolve(str(tiny_model(tokenizer=False)), skip_tokenizer_init=True)
    assert resolved.model_impl == "native"
    assert _architecture_step(resolved.trace).plugin == "modelport.builtin.architectures"


def test_the_llama_family_declines_rope_types_and_layouts_it_lacks():
    from transformers import LlamaConfig

    from modelport.models.llama import ACTIVATIONS, LlamaForCausalLM
    from modelport.models.rope import ROPE_TYPES

    assert llama_family_unsupported_reason(LlamaConfig()) is None
    proportional = LlamaConfig(rope_parameters={"rope_type": "proportional", "rope_theta": 1e4})
    assert LlamaForCausalLM.unsupported_reason(proportional) == (
        "rope_type 'proportional' is not implemented; supported: default, linear, dynamic, yarn, llama3, longrope"
    )
    per_layer = LlamaConfig()
    per_layer.rope_parameters = {
        "full_attention": {"rope_type": "default"},
        "sliding_attention": {"rope_type": "default"},
    }
    assert "per layer type (full_attention, sliding_attention)" in llama_family_unsupported_reason(per_layer)
    # The names the check uses without importing torch are the ones the native code implements.
    from modelport.builtin.native import LLAMA_FAMILY_ACTIVATIONS, LLAMA_FAMILY_ROPE_TYPES

    assert LLAMA_FAMILY_ROPE_TYPES == tuple(ROPE_TYPES) and LLAMA_FAMILY_ACTIVATIONS == tuple(ACTIVATIONS)


def test_llama_backend_and_native_logits_agree(tiny_model):
    folder = tiny_model(tokenizer=False)
    backend = modelport.load(str(folder), dtype="float32", model_impl="transformers", skip_tokenizer_init=True).model
    native = modelport.load(str(folder), dtype="float32", model_impl="native", skip_tokenizer_init=True).model
    assert backend.batched
    long, short = list(range(3, 14)), [40, 41, 42]
    results = {}
    for model in (backend, native):
        cache = model.new_kv_cache(8, 4)
        first = SequenceBatch(torch.tensor(long[:6]), torch.arange(6), [6], [0], [[0, 1, 2]], all_logits=True)
        mixed = SequenceBatch(
            torch.tensor(long[6:] + short),
            torch.tensor([*range(6, 11), *range(3)]),
            [5, 3],
            [6, 0],
            [[0, 1, 2], [3]],
            all_logits=True,
        )
        decode = SequenceBatch(torch.tensor([7, 8]), torch.tensor([11, 3]), [1, 1], [11, 3], [[0, 1, 2], [3]])
        results[model] = [model.forward(b, cache) for b in (first, mixed, decode)]
    for ours, theirs in zip(results[backend], results[native], strict=True):
        assert ours.shape == theirs.shape and (ours - theirs).abs().max() < 1e-4


REMOTE_CODE = '''
from transformers import GPTNeoXForCausalLM


class TinyNeoXForCausalLM(GPTNeoXForCausalLM):
    """A repository's own model class (here, GPT-NeoX under another name)."""
'''


def _remote_code_model(tmp_path: Path) -> Path:
    from safetensors.torch import save_file
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    folder = tmp_path / "remote"
    config = GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=64
    )
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(config).eval()
    # The module's own names: transformers applies no checkpoint renaming (embed_out) to a remote-code class.
    config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    data = json.loads((folder / "config.json").read_text())
    data["architectures"] = ["TinyNeoXForCausalLM"]
    data["auto_map"] = {"AutoModelForCausalLM": "modeling_tiny_neox.TinyNeoXForCausalLM"}
    (folder / "config.json").write_text(json.dumps(data))
    (folder / "modeling_tiny_neox.py").write_text(REMOTE_CODE)
    return folder


def test_a_remote_code_class_is_held_back_without_trust_remote_code_naming_the_file(tmp_path):
    folder = _remote_code_model(tmp_path)
    with pytest.raises(RemoteCodeRequiredError) as info:
        modelport.resolve(str(folder), skip_tokenizer_init=True)
    message = str(info.value)
    assert str(folder / "config.json") in message
    assert "modeling_tiny_neox.py: modeling_tiny_neox.TinyNeoXForCausalLM" in message
    assert "auto_map.AutoModelForCausalLM" in message and "trust_remote_code=True" in message


def test_a_remote_code_class_runs_batched_with_trust_remote_code(tmp_path):
    from transformers import GPTNeoXForCausalLM

    folder = _remote_code_model(tmp_path)
    loaded = modelport.load(str(folder), dtype="float32", trust_remote_code=True, skip_tokenizer_init=True)
    step = _architecture_step(loaded.trace)
    assert step.plugin == "modelport-transformers"
    assert "trust_remote_code=True: the repository's modeling_tiny_neox.py defines" in step.reason
    model = loaded.model
    assert type(model.module).__name__ == "TinyNeoXForCausalLM" and model.batched
    assert loaded.weights.missing == () and loaded.weights.unexpected == ()
    ids = [5, 9, 13, 2, 40, 33]
    cache = model.new_kv_cache(4, 4)
    got = model.forward(SequenceBatch(torch.tensor(ids), torch.arange(6), [6], [0], [[0, 1]], all_logits=True), cache)
    with torch.no_grad():
        want = GPTNeoXForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()(torch.tensor([ids])).logits[0]
    assert want.abs().max() > 0
    assert (got - want).abs().max() < 1e-4
