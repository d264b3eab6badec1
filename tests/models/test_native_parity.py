"""Native models equal transformers' implementations: logits within 1e-4 in float32, greedy tokens exactly.

Each case builds transformers' model from a random tiny config, saves it,
loads the folder with ``modelport.load(..., model_impl="native")`` and runs
both on the same sequences: a prefill of three sequences of different lengths
in one batch, then several decode steps of all three at once; the longest
sequence outgrows ``max_position_embeddings`` (so length-dependent RoPE
switches) and every sliding window.
"""

from __future__ import annotations

import pytest

pytest.importorskip("modelport_hf", reason="reading a Hugging Face folder needs modelport-hf")
torch = pytest.importorskip("torch")

from native_harness import (  # noqa: E402
    MAX_POSITIONS,
    VOCAB,
    PagedRunner,
    one_thread,
    prefill_then_decode,
    reference_generate,
    reference_model,
    reference_steps,
    tiny_config,
)

import modelport  # noqa: E402
from modelport.models.rope import RotaryEmbedding  # noqa: E402

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

TOLERANCE = 1e-4
PROMPT_LENGTHS = (5, MAX_POSITIONS + 8, 17)
DECODE_STEPS = 4

ROPE_VARIANTS = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8,
    },
    "longrope": {
        "rope_type": "longrope",
        "short_factor": [1.0 + 0.1 * i for i in range(8)],
        "long_factor": [1.0 + 0.5 * i for i in range(8)],
        "original_max_position_embeddings": 16,
    },
}

SLIDING = {
    "mistral": {"sliding_window": 6},
    "mixtral": {"sliding_window": 6},
    "qwen2": {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1},
    "qwen3": {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1},
}

CASES = [
    *[pytest.param(arch, {}, id=f"{arch}-default") for arch in ("llama", "mistral", "qwen2", "qwen3", "mixtral")],
    *[
        pytest.param(arch, {"rope_parameters": {"rope_theta": 10000.0, **params}}, id=f"{arch}-{name}")
        for arch in ("llama", "mistral", "qwen2", "qwen3", "mixtral")
        for name, params in ROPE_VARIANTS.items()
    ],
    *[pytest.param(arch, fields, id=f"{arch}-sliding-window") for arch, fields in SLIDING.items()],
    pytest.param("llama", {"attention_bias": True, "mlp_bias": True}, id="llama-biases"),
    pytest.param("llama", {"tie_word_embeddings": True}, id="llama-tied-embeddings"),
    pytest.param("llama", {"num_key_value_heads": 1}, id="llama-multi-query"),
    pytest.param("llama", {"num_key_value_heads": 4}, id="llama-multi-head"),
    pytest.param("qwen2", {"tie_word_embeddings": True}, id="qwen2-tied-embeddings"),
    pytest.param("qwen3", {"attention_bias": True}, id="qwen3-attention-bias"),
]


def _load_native(folder):
    loaded = modelport.load(str(folder), model_impl="native", dtype="float32", skip_tokenizer_init=True)
    assert loaded.resolved.model_impl == "native"
    assert loaded.resolved.architecture.plugin == "modelport.builtin.native"
    assert loaded.weights.missing == () and loaded.weights.unexpected == ()
    return loaded.model


def _prompts(seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=generator) for n in PROMPT_LENGTHS]


def _worst_difference(native, reference) -> float:
    """Prefill three sequences in one batch, then decode all three together; compare every logit."""
    prompts = _prompts()
    generator = torch.Generator().manual_seed(2)
    steps = [torch.randint(3, VOCAB, (len(prompts),), generator=generator) for _ in range(DECODE_STEPS)]
    got = prefill_then_decode(native, prompts, steps)
    worst = 0.0
    for seq, prompt in enumerate(prompts):
        chunks = [prompt, *[tokens[seq : seq + 1] for tokens in steps]]
        expected = reference_steps(reference, chunks)
        for mine, theirs in zip(got[seq], expected, strict=True):
            assert mine.shape == theirs.shape
            worst = max(worst, (mine - theirs).abs().max().item())
    return worst


@pytest.mark.parametrize(("arch", "fields"), CASES)
def test_prefill_and_decode_logits_equal_transformers(arch, fields, tmp_path, record_property):
    config = tiny_config(arch, **fields)
    reference = reference_model(config, tmp_path)
    worst = _worst_difference(_load_native(tmp_path), reference)
    record_property("max_abs_logit_difference", worst)
    assert worst < TOLERANCE


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "mixtral"])
def test_greedy_generation_equals_transformers_generate(arch, tmp_path):
    config = tiny_config(arch, **SLIDING.get(arch, {}))
    reference = reference_model(config, tmp_path)
    runner = PagedRunner(_load_native(tmp_path))
    prompts = _prompts(seed=3)
    new_tokens = 12
    ours = runner.greedy(prompts, new_tokens, config.eos_token_id)
    theirs = [reference_generate(reference, prompt, new_tokens) for prompt in prompts]
    assert ours == theirs
    assert any(len(set(tokens)) > 1 for tokens in ours)  # not a degenerate model repeating one token


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_chunked_prefill_mixed_with_decodes_equals_transformers(arch, tmp_path):
    """A prompt fed in chunks (context and several new tokens) beside decodes of another sequence."""
    config = tiny_config(arch, **SLIDING.get(arch, {}))
    reference = reference_model(config, tmp_path)
    runner = PagedRunner(_load_native(tmp_path))
    long, short = _prompts()[1], _prompts()[0]
    chunks = [long[:9], long[9:10], long[10:23], long[23:]]
    decodes = [torch.tensor([7]), torch.tensor([11]), torch.tensor([13])]
    got_long, got_short = [], []
    got_short.append(runner.step({1: short}, all_logits=True))
    for i, chunk in enumerate(chunks):
        work = {0: chunk} if i == 0 else {0: chunk, 1: decodes[i - 1]}
        logits = runner.step(work, all_logits=True)
        got_long.append(logits[: len(chunk)])
        if i:
            got_short.append(logits[len(chunk) :])
    worst = max(
        (mine - theirs).abs().max().item()
        for mine, theirs in [
            *zip(got_long, reference_steps(reference, chunks), strict=True),
            *zip(got_short, reference_steps(reference, [short, *decodes]), strict=True),
        ]
    )
    assert worst < TOLERANCE


def _wrong_theta(model):
    config = model.hf_config
    params = dict(config.rope_parameters, rope_theta=config.rope_parameters["rope_theta"] * 1.5)
    model._rotary_embedding = RotaryEmbedding(
        type(config)(**{**config.to_dict(), "rope_parameters": params}), model.shape.head_dim, "cpu"
    )


def _no_window(model):
    for layer in model.model.layers:
        layer.self_attn.window = None


def _static_rope(model):
    rotary = model._rotary_embedding
    rotary.rope_type = "default"  # dynamic NTK's length dependence switched off, frequencies unchanged


@pytest.mark.parametrize(
    ("arch", "fields", "break_it"),
    [
        pytest.param("llama", {}, _wrong_theta, id="wrong-rope-theta"),
        pytest.param("mistral", SLIDING["mistral"], _no_window, id="sliding-window-ignored"),
        pytest.param("qwen2", SLIDING["qwen2"], _no_window, id="qwen2-sliding-window-ignored"),
        pytest.param(
            "llama",
            {"rope_parameters": {"rope_theta": 10000.0, **ROPE_VARIANTS["dynamic"]}},
            _static_rope,
            id="dynamic-ntk-ignored",
        ),
    ],
)
def test_the_parity_check_fails_on_a_wrong_model(arch, fields, break_it, tmp_path):
    """The comparison is sharp: each deliberate mistake moves the logits far beyond the tolerance."""
    config = tiny_config(arch, **fields)
    reference = reference_model(config, tmp_path)
    native = _load_native(tmp_path)
    assert _worst_difference(native, reference) < TOLERANCE
    break_it(native)
    assert _worst_difference(native, reference) > 100 * TOLERANCE
