"""Native InternLM2 against an independent float64 reference of InternLM's remote code.

InternLM2's modeling_internlm2.py is remote code on the Hugging Face Hub: not
installed here, unreachable from the tests, and not committed (third-party code),
so ``trust_remote_code`` cannot run it in CI. :func:`reference_logits` is a second
implementation, written from a reading of that file, in float64, over whole
sequences: grouped ``wqkv`` (per key/value head: its query heads, its key, its
value), rotary positions over the two halves of each head (``rope_theta``, and
``linear`` scaling), RMSNorm, a SiLU-gated MLP. It shares no code with
:mod:`modelport.models.internlm2`. ``dynamic`` NTK scaling goes through the same
:mod:`modelport.models.rope` as every Llama-family model, whose parity with
transformers' (cached keys keep the rotation they were written with) is
tests/models/test_native_parity.py's.

The tiny repositories are written the way published ones are: config.json with
``auto_map`` pointing at a ``configuration_internlm2.py`` beside it (written here,
a config class of a few lines), loaded with ``trust_remote_code=True`` as InternLM2
needs, and a model.safetensors under the checkpoint's own names.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch
from native_harness import PagedRunner, load_native, one_thread, worst_against_reference  # noqa: F401

import modelport
from modelport.errors import RemoteCodeRequiredError

pytest.importorskip("modelport_hf", reason="config.json is modelport-hf's format")

VOCAB = 96
TOLERANCE = 2e-4
PROMPT_LENGTHS = (6, 2, 11)
DECODE_STEPS = 5

CONFIG_CODE = textwrap.dedent(
    '''
    """The config class of this tiny InternLM2 repository (written by modelport's tests)."""

    from transformers import PretrainedConfig


    class InternLM2Config(PretrainedConfig):
        model_type = "internlm2"

        def __init__(self, vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=32,
                     rms_norm_eps=1e-6, bias=False, rope_theta=10000.0, rope_scaling=None,
                     tie_word_embeddings=False, **kwargs):
            self.vocab_size = vocab_size
            self.hidden_size = hidden_size
            self.intermediate_size = intermediate_size
            self.num_hidden_layers = num_hidden_layers
            self.num_attention_heads = num_attention_heads
            self.num_key_value_heads = num_key_value_heads
            self.hidden_act = hidden_act
            self.max_position_embeddings = max_position_embeddings
            self.rms_norm_eps = rms_norm_eps
            self.bias = bias
            self.rope_theta = rope_theta
            self.rope_scaling = rope_scaling
            super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
    '''
)

BASE = {
    "model_type": "internlm2",
    "architectures": ["InternLM2ForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
    },
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 32,
    "rms_norm_eps": 1e-6,
    "bias": False,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}

VARIANTS = [
    pytest.param({}, id="grouped-query"),
    pytest.param({"num_key_value_heads": 4}, id="multi-head"),
    pytest.param({"num_key_value_heads": 1, "rope_theta": 1e6}, id="multi-query-theta"),
    pytest.param({"bias": True}, id="biases"),
    pytest.param({"rope_scaling": {"type": "linear", "factor": 2.0}}, id="linear-rope-scaling"),
]


def config_of(**fields) -> dict:
    return {**BASE, **fields}


def write_model(folder: Path, config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    h, heads, kv, f = (
        config[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size")
    )
    d = h // heads

    def rand(*shape, scale=0.08):
        return torch.randn(*shape, generator=generator) * scale

    tensors = {"model.tok_embeddings.weight": rand(VOCAB, h, scale=0.5)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors[p + "attention_norm.weight"] = 1.0 + rand(h, scale=0.1)
        tensors[p + "ffn_norm.weight"] = 1.0 + rand(h, scale=0.1)
        tensors[p + "attention.wqkv.weight"] = rand((heads + 2 * kv) * d, h, scale=0.15)
        tensors[p + "attention.wo.weight"] = rand(h, heads * d)
        if config["bias"]:
            tensors[p + "attention.wqkv.bias"] = rand((heads + 2 * kv) * d, scale=0.1)
            tensors[p + "attention.wo.bias"] = rand(h, scale=0.1)
        tensors[p + "feed_forward.w1.weight"] = rand(f, h)
        tensors[p + "feed_forward.w3.weight"] = rand(f, h)
        tensors[p + "feed_forward.w2.weight"] = rand(h, f)
    tensors["model.norm.weight"] = 1.0 + rand(h, scale=0.1)
    tensors["output.weight"] = rand(VOCAB, h, scale=0.3)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_internlm2.py").write_text(CONFIG_CODE)
    save_file(tensors, str(folder / "model.safetensors"))
    return tensors


# --- the reference: float64, one whole sequence, written from modeling_internlm2.py -------------


def _rms(x, weight, eps):
    return weight * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def _rope(x, config):
    """x: [S, heads, d]; dims i and i + d/2 turn together (rotate_half); ``linear`` scaling divides positions."""
    seq, _, d = x.shape
    scaling = config.get("rope_scaling") or {}
    factor = scaling.get("factor", 1.0) if scaling.get("type") == "linear" else 1.0
    exponents = torch.arange(0, d // 2, dtype=torch.float64) * 2.0 / d
    angles = (torch.arange(seq, dtype=torch.float64) / factor)[:, None] * float(config["rope_theta"]) ** -exponents
    c, s = angles.cos()[:, None, :], angles.sin()[:, None, :]
    first, second = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat((first * c - second * s, second * c + first * s), dim=-1)


def reference_logits(tensors: dict[str, torch.Tensor], config: dict, ids: list[int]) -> torch.Tensor:
    """Logits of every position of ``ids`` (``[S, vocab]``, float64)."""
    w = {k: v.double() for k, v in tensors.items()}
    heads, kv, h = config["num_attention_heads"], config["num_key_value_heads"], config["hidden_size"]
    d, group, eps, seq = h // heads, heads // kv, config["rms_norm_eps"], len(ids)
    x = w["model.tok_embeddings.weight"][ids]
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        ln = _rms(x, w[p + "attention_norm.weight"], eps)
        qkv = ln @ w[p + "attention.wqkv.weight"].T
        if p + "attention.wqkv.bias" in w:
            qkv = qkv + w[p + "attention.wqkv.bias"]
        qkv = qkv.reshape(seq, kv, group + 2, d)  # "b q (h gs d) -> b q h gs d"
        q = qkv[:, :, :group].reshape(seq, heads, d)
        k, v = qkv[:, :, -2], qkv[:, :, -1]
        q, k = _rope(q, config), _rope(k, config)
        context = torch.empty(seq, heads, d, dtype=torch.float64)
        for head in range(heads):
            scores = (q[:, head] @ k[:, head // group].T) / math.sqrt(d)
            context[:, head] = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1) @ v[:, head // group]
        attn = context.reshape(seq, heads * d) @ w[p + "attention.wo.weight"].T
        if p + "attention.wo.bias" in w:
            attn = attn + w[p + "attention.wo.bias"]
        x = x + attn
        ln = _rms(x, w[p + "ffn_norm.weight"], eps)
        gate = torch.nn.functional.silu(ln @ w[p + "feed_forward.w1.weight"].T)
        x = x + (gate * (ln @ w[p + "feed_forward.w3.weight"].T)) @ w[p + "feed_forward.w2.weight"].T
    return _rms(x, w["model.norm.weight"], eps) @ w["output.weight"].T


# --- the tests ---------------------------------------------------------------------------------


def _load(folder: Path):
    return load_native(folder, "modelport.models.internlm2:InternLM2ForCausalLM", trust_remote_code=True)


def _worst_difference(model, tensors, config) -> float:
    """Three prompts prefilled in one batch, then decoded together; every logit against the reference."""
    return worst_against_reference(
        model,
        lambda ids: reference_logits(tensors, config, ids),
        vocab=VOCAB,
        prompt_lengths=PROMPT_LENGTHS,
        decode_steps=DECODE_STEPS,
    )


@pytest.mark.parametrize("fields", VARIANTS)
def test_prefill_and_decode_logits_equal_the_float64_reference(fields, tmp_path, one_thread, record_property):  # noqa: F811
    config = config_of(**fields)
    tensors = write_model(tmp_path, config)
    worst = _worst_difference(_load(tmp_path), tensors, config)
    record_property("max_abs_logit_difference", worst)
    assert worst < TOLERANCE


def test_the_parity_check_fails_on_a_wrong_qkv_split(tmp_path, one_thread, monkeypatch):  # noqa: F811
    """Splitting wqkv as [all q | all k | all v] (a Llama-style guess) is caught."""
    from modelport.models import internlm2

    def flat(tensor, num_kv_heads, head_dim):
        kv = num_kv_heads * head_dim
        return tensor[: -2 * kv], tensor[-2 * kv : -kv], tensor[-kv:]

    config = config_of()
    tensors = write_model(tmp_path, config)
    monkeypatch.setattr(internlm2, "split_wqkv", flat)
    assert _worst_difference(_load(tmp_path), tensors, config) > 100 * TOLERANCE


def test_internlm2_needs_remote_code_for_its_config_as_in_vllm(tmp_path):
    """vLLM 0.32 fails on internlm2 configs without trust_remote_code; so does modelport, with a typed error."""
    write_model(tmp_path, config_of())
    with pytest.raises(RemoteCodeRequiredError) as info:
        modelport.resolve(str(tmp_path), skip_tokenizer_init=True)
    assert "configuration_internlm2.InternLM2Config" in str(info.value)


def test_greedy_generation_through_llm_equals_the_reference(tmp_path, one_thread):  # noqa: F811
    config = config_of()
    tensors = write_model(tmp_path, config)
    prompt = [7, 19, 40, 3]
    llm = modelport.LLM(str(tmp_path), dtype="float32", skip_tokenizer_init=True, trust_remote_code=True)
    [output] = llm.generate(
        [{"prompt_token_ids": prompt}], modelport.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    )
    expected, ids = [], list(prompt)
    for _ in range(8):
        token = int(reference_logits(tensors, config, ids)[-1].argmax())
        expected.append(token)
        ids.append(token)
    assert list(output.outputs[0].token_ids) == expected


def test_bfloat16_stays_close_to_the_reference(tmp_path, one_thread):  # noqa: F811
    config = config_of()
    tensors = write_model(tmp_path, config)
    loaded = modelport.load(str(tmp_path), dtype="bfloat16", skip_tokenizer_init=True, trust_remote_code=True)
    ids = torch.tensor([5, 11, 42, 8, 70, 3])
    got = PagedRunner(loaded.model).step({0: ids}, all_logits=True).double()
    expected = reference_logits(tensors, config, ids.tolist())
    assert (got - expected).abs().max().item() < 0.15 * expected.abs().max().item()
