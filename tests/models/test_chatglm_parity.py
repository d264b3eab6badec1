"""Native ChatGLM2/3 and GLM-4 against an independent float64 reference of THUDM's remote code.

Why not THUDM's ``modeling_chatglm.py`` itself: it is remote code on the Hugging
Face Hub (no copy is installed here, the Hub is unreachable from the tests, and
third-party code is not committed), so ``trust_remote_code`` cannot run it in CI.
:func:`reference_logits` is instead a second implementation, written from a
reading of that file, in float64, over whole sequences (no cache, no batching,
plain matrices): per-group fused QKV (or per-head interleaved without multi-query
attention), rotary turns of adjacent pairs over half of each head with base
``10000 * rope_ratio``, SwiGLU, RMSNorm or LayerNorm, and both residual forms.
It shares no code with :mod:`modelport.models.chatglm`. One variant follows vLLM
0.32 rather than the remote code: ``original_rope: false`` (CogAgent) turns two
halves, as vLLM reads that flag.

The tiny models are written the way published ones are: a ``config.json``
naming ``ChatGLMModel`` with remote-code ``auto_map``, and a ``model.safetensors``
holding the checkpoint's tensor names, including the stored rotary frequencies.
They load through ``modelport.load`` (modelport-hf parses the config).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from native_harness import PagedRunner, load_native, one_thread, worst_against_reference  # noqa: F401

import modelport

pytest.importorskip("modelport_hf", reason="the chatglm config class comes from modelport-hf")

VOCAB = 96
TOLERANCE = 2e-4  # float32 model against the float64 reference
PROMPT_LENGTHS = (7, 3, 12)
DECODE_STEPS = 5

BASE = {
    "model_type": "chatglm",
    "architectures": ["ChatGLMModel"],
    "auto_map": {
        "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    },
    "num_layers": 2,
    "padded_vocab_size": VOCAB,
    "hidden_size": 64,
    "ffn_hidden_size": 80,
    "kv_channels": 16,
    "num_attention_heads": 4,
    "seq_length": 64,
    "layernorm_epsilon": 1e-5,
    "rmsnorm": True,
    "apply_residual_connection_post_layernorm": False,
    "post_layer_norm": True,
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "original_rope": True,
    "torch_dtype": "float32",
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
}

VARIANTS = [
    pytest.param({}, id="chatglm2-multi-query"),
    pytest.param({"multi_query_group_num": 1}, id="chatglm3-one-group"),
    pytest.param({"rope_ratio": 500.0, "seq_length": 128}, id="glm4-rope-ratio"),
    pytest.param({"multi_query_attention": False}, id="multi-head-interleaved-qkv"),
    pytest.param({"original_rope": False}, id="cogagent-halves-rope"),
    pytest.param(
        {
            "rmsnorm": False,
            "add_bias_linear": True,
            "apply_residual_connection_post_layernorm": True,
            "post_layer_norm": False,
        },
        id="layernorm-biases-post-norm-residual",
    ),
]


def config_of(**fields) -> dict:
    return {**BASE, **fields}


def checkpoint(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 tensors under the names THUDM's checkpoints use."""
    generator = torch.Generator().manual_seed(seed)
    h, d, heads, f = (
        config["hidden_size"],
        config["kv_channels"],
        config["num_attention_heads"],
        config["ffn_hidden_size"],
    )
    groups = config["multi_query_group_num"] if config["multi_query_attention"] else heads
    qkv = (heads + 2 * groups) * d

    def rand(*shape, scale=0.08):
        return torch.randn(*shape, generator=generator) * scale

    tensors = {"transformer.embedding.word_embeddings.weight": rand(VOCAB, h, scale=0.5)}
    norm_names = ["input_layernorm", "post_attention_layernorm"]
    for i in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        for norm in norm_names:
            tensors[p + norm + ".weight"] = 1.0 + rand(h, scale=0.1)
            if not config["rmsnorm"]:
                tensors[p + norm + ".bias"] = rand(h, scale=0.1)
        tensors[p + "self_attention.query_key_value.weight"] = rand(qkv, h, scale=0.15)
        if config["add_bias_linear"] or config["add_qkv_bias"]:
            tensors[p + "self_attention.query_key_value.bias"] = rand(qkv, scale=0.1)
        tensors[p + "self_attention.dense.weight"] = rand(h, heads * d)
        tensors[p + "mlp.dense_h_to_4h.weight"] = rand(2 * f, h)
        tensors[p + "mlp.dense_4h_to_h.weight"] = rand(h, f)
        if config["add_bias_linear"]:
            tensors[p + "self_attention.dense.bias"] = rand(h, scale=0.1)
            tensors[p + "mlp.dense_h_to_4h.bias"] = rand(2 * f, scale=0.1)
            tensors[p + "mlp.dense_4h_to_h.bias"] = rand(h, scale=0.1)
    if config["post_layer_norm"]:
        tensors["transformer.encoder.final_layernorm.weight"] = 1.0 + rand(h, scale=0.1)
        if not config["rmsnorm"]:
            tensors["transformer.encoder.final_layernorm.bias"] = rand(h, scale=0.1)
    tensors["transformer.output_layer.weight"] = rand(VOCAB, h, scale=0.3)
    # Stored by the published checkpoints (a buffer of the remote code); computed natively, never loaded.
    n = d // 2
    tensors["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, n, 2).float() / n))
    return tensors


def write_model(folder: Path, config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    tensors = checkpoint(config, seed)
    save_file(tensors, str(folder / "model.safetensors"))
    return tensors


# --- the reference: float64, one whole sequence, written from modeling_chatglm.py ---------------


def _norm(x, weight, bias, config):
    eps = config["layernorm_epsilon"]
    if config["rmsnorm"]:
        return weight * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return weight * (x - mean) / torch.sqrt(var + eps) + bias


def _rope(x, config):
    """x: [S, heads, d]. Pairs (2i, 2i+1) of the first d/2 dims turn by position * base^(-2i/(d/2)).

    With ``original_rope`` false (CogAgent), the pairs are (i, i + d/4) instead, as vLLM reads that flag.
    """
    seq, _, d = x.shape
    n = d // 2
    base = 10000.0 * config.get("rope_ratio", 1.0)
    adjacent = config.get("original_rope", True)
    out = x.clone()
    for pos in range(seq):
        for i in range(n // 2):
            angle = pos * base ** (-2.0 * i / n)
            c, s = math.cos(angle), math.sin(angle)
            first, second = (2 * i, 2 * i + 1) if adjacent else (i, i + n // 2)
            a, b = x[pos, :, first].clone(), x[pos, :, second].clone()
            out[pos, :, first] = a * c - b * s
            out[pos, :, second] = b * c + a * s
    return out


def reference_logits(tensors: dict[str, torch.Tensor], config: dict, ids: list[int]) -> torch.Tensor:
    """Logits of every position of ``ids`` (``[S, vocab]``, float64)."""
    w = {k: v.double() for k, v in tensors.items()}
    heads, d = config["num_attention_heads"], config["kv_channels"]
    mq = config["multi_query_attention"]
    groups = config["multi_query_group_num"] if mq else heads
    seq = len(ids)
    x = w["transformer.embedding.word_embeddings.weight"][ids]
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    for i in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        ln = _norm(x, w[p + "input_layernorm.weight"], w.get(p + "input_layernorm.bias"), config)
        mixed = ln @ w[p + "self_attention.query_key_value.weight"].T
        if p + "self_attention.query_key_value.bias" in w:
            mixed = mixed + w[p + "self_attention.query_key_value.bias"]
        if mq:
            q = mixed[:, : heads * d].reshape(seq, heads, d)
            k = mixed[:, heads * d : (heads + groups) * d].reshape(seq, groups, d)
            v = mixed[:, (heads + groups) * d :].reshape(seq, groups, d)
        else:
            per_head = mixed.reshape(seq, heads, 3 * d)
            q, k, v = per_head[..., :d], per_head[..., d : 2 * d], per_head[..., 2 * d :]
        q, k = _rope(q, config), _rope(k, config)
        context = torch.empty(seq, heads, d, dtype=torch.float64)
        for head in range(heads):
            group = head // (heads // groups)  # the remote code expands each group to heads // groups heads
            scores = (q[:, head] @ k[:, group].T) / math.sqrt(d)
            scores = scores.masked_fill(~causal, float("-inf"))
            context[:, head] = torch.softmax(scores, -1) @ v[:, group]
        attn = context.reshape(seq, heads * d) @ w[p + "self_attention.dense.weight"].T
        if p + "self_attention.dense.bias" in w:
            attn = attn + w[p + "self_attention.dense.bias"]
        residual = ln if config["apply_residual_connection_post_layernorm"] else x
        x = residual + attn
        ln = _norm(x, w[p + "post_attention_layernorm.weight"], w.get(p + "post_attention_layernorm.bias"), config)
        up = ln @ w[p + "mlp.dense_h_to_4h.weight"].T
        if p + "mlp.dense_h_to_4h.bias" in w:
            up = up + w[p + "mlp.dense_h_to_4h.bias"]
        half = up.shape[-1] // 2
        act = torch.nn.functional.silu(up[:, :half]) * up[:, half:]
        down = act @ w[p + "mlp.dense_4h_to_h.weight"].T
        if p + "mlp.dense_4h_to_h.bias" in w:
            down = down + w[p + "mlp.dense_4h_to_h.bias"]
        residual = ln if config["apply_residual_connection_post_layernorm"] else x
        x = residual + down
    if config["post_layer_norm"]:
        x = _norm(
            x,
            w["transformer.encoder.final_layernorm.weight"],
            w.get("transformer.encoder.final_layernorm.bias"),
            config,
        )
    return x @ w["transformer.output_layer.weight"].T


# --- the tests ---------------------------------------------------------------------------------


def _load(folder: Path):
    return load_native(folder, "modelport.models.chatglm:ChatGLMForCausalLM")


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


def test_the_logits_are_not_trivially_small(tmp_path, one_thread):  # noqa: F811
    """The comparison means something: logits spread over several units, so a wrong layer shows."""
    config = config_of()
    tensors = write_model(tmp_path, config)
    logits = reference_logits(tensors, config, list(range(3, 15)))
    assert logits.std().item() > 0.5


def _neox_rotation(model):
    """Break the model the way a Llama-style port would: rotate the two halves instead of adjacent pairs."""
    from modelport.models import chatglm

    def halves(x, cos, sin):
        rotary = 2 * cos.shape[-1]
        turned, passed = x[..., :rotary], x[..., rotary:]
        first, second = turned[..., : rotary // 2], turned[..., rotary // 2 :]
        c, s = cos[:, None, :], sin[:, None, :]
        return torch.cat((first * c - second * s, second * c + first * s, passed), dim=-1)

    return chatglm, "rotate_pairs", halves


def _no_rotation(model):
    """Break it by leaving positions out: a model blind to order."""
    from modelport.models import chatglm

    return chatglm, "rotate_pairs", lambda x, cos, sin: x


def _rope_ratio_ignored(model):
    """Break it by ignoring ``rope_ratio`` (GLM-4's 500): the base stays 10000."""
    n = model.glm_shape.rotary_dim
    model._inv_freq = 1.0 / (10000.0 ** (torch.arange(0, n, 2, dtype=torch.float32) / n))
    return None


@pytest.mark.parametrize(
    "break_it", [_neox_rotation, _no_rotation, _rope_ratio_ignored], ids=["halves-not-pairs", "no-rotation", "base"]
)
def test_the_parity_check_fails_on_a_wrong_model(break_it, tmp_path, one_thread, monkeypatch):  # noqa: F811
    config = config_of(rope_ratio=500.0, seq_length=128)
    tensors = write_model(tmp_path, config)
    model = _load(tmp_path)
    patch = break_it(model)
    if patch is not None:
        monkeypatch.setattr(*patch)
    assert _worst_difference(model, tensors, config) > 100 * TOLERANCE


def test_greedy_generation_through_llm_equals_the_reference(tmp_path, one_thread):  # noqa: F811
    config = config_of()
    tensors = write_model(tmp_path, config)
    prompt = [5, 17, 33, 8, 61]
    llm = modelport.LLM(str(tmp_path), dtype="float32", skip_tokenizer_init=True)
    params = modelport.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    [output] = llm.generate([{"prompt_token_ids": prompt}], params)
    expected, ids = [], list(prompt)
    for _ in range(8):
        token = int(reference_logits(tensors, config, ids)[-1].argmax())
        expected.append(token)
        ids.append(token)
    assert list(output.outputs[0].token_ids) == expected


def test_the_published_chatglm2_config_resolves_to_the_native_model_as_in_vllm(tmp_path, monkeypatch):
    """THUDM/chatglm2-6b's config: vLLM 0.32 serves ChatGLMModel natively with max_model_len 32768."""
    corpus = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "configs"
    source = corpus / "chatglm__THUDM_chatglm2-6b.json"
    if not source.is_file():
        pytest.skip(f"the shared corpus is absent ({corpus})")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "config.json").write_text(source.read_text())
    resolved = modelport.resolve(str(tmp_path), load_format="dummy", skip_tokenizer_init=True)
    assert resolved.architecture.name == "ChatGLMModel"
    assert resolved.model_impl == "native"
    assert resolved.max_model_len == 32768
    assert (resolved.facts.head_dim, resolved.facts.num_kv_heads) == (128, 2)
    assert resolved.facts.runner == "generate"  # vLLM's runner_type, although the name ends in "Model"


def test_chatglm_for_conditional_generation_is_vllms_alias_and_the_trace_says_so(tmp_path):
    config = config_of(architectures=["ChatGLMForConditionalGeneration"])
    tensors = write_model(tmp_path, config)
    loaded = modelport.load(str(tmp_path), dtype="float32", skip_tokenizer_init=True)
    assert loaded.resolved.architecture.name == "ChatGLMForConditionalGeneration"
    assert loaded.resolved.architecture.target == "modelport.models.chatglm:ChatGLMForCausalLM"
    step = next(s for s in loaded.resolved.trace.to_list() if s["step"] == "architecture")
    assert "ChatGLMForConditionalGeneration is an alias of ChatGLMModel" in step["reason"]
    runner = PagedRunner(loaded.model)
    ids = torch.tensor([4, 9, 30, 2, 77])
    got = runner.step({0: ids}, all_logits=True).double()
    assert (got - reference_logits(tensors, config, ids.tolist())).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_stays_close_to_the_reference(dtype, tmp_path, one_thread):  # noqa: F811
    """The published checkpoints are float16/bfloat16: the model runs in them (cos/sin cast as the remote code does)."""
    config = config_of()
    tensors = write_model(tmp_path, config)
    loaded = modelport.load(str(tmp_path), dtype=dtype, skip_tokenizer_init=True)
    assert str(next(loaded.model.parameters()).dtype) == f"torch.{dtype}"
    ids = torch.tensor([4, 9, 30, 2, 77, 15, 60])
    got = PagedRunner(loaded.model).step({0: ids}, all_logits=True).double()
    expected = reference_logits(tensors, config, ids.tolist())
    assert (got - expected).abs().max().item() < 0.15 * expected.abs().max().item()


# --- hostile configs: ChatGLM's config class checks no type, the native shape does ------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ffn_hidden_size", "x"),
        ("ffn_hidden_size", 0),
        ("kv_channels", "16"),
        ("multi_query_group_num", "2"),
        ("multi_query_group_num", 0),
        ("rope_ratio", "x"),
        ("rope_ratio", -1.0),
        ("layernorm_epsilon", "x"),
        ("layernorm_epsilon", math.nan),
    ],
)
def test_a_chatglm_field_of_the_wrong_type_or_sign_is_an_invalid_config_naming_folder_field_and_value(
    tmp_path, field, value
):
    from modelport.errors import InvalidConfigError

    folder = tmp_path / "glm"
    write_model(folder, config_of())
    (folder / "config.json").write_text(json.dumps(config_of(**{field: value})))
    with pytest.raises(InvalidConfigError) as info:
        modelport.load(str(folder), dtype="float32", skip_tokenizer_init=True)
    assert info.value.field == field and repr(value) in str(info.value) and str(folder) in str(info.value)


def test_chatglm_fields_left_at_zero_or_null_keep_their_defaults(tmp_path):
    folder = tmp_path / "glm"
    write_model(folder, config_of())
    (folder / "config.json").write_text(json.dumps(config_of(kv_channels=0, rope_ratio=None)))  # 64 / 4 heads
    assert modelport.load(str(folder), dtype="float32", skip_tokenizer_init=True).weights.loaded
