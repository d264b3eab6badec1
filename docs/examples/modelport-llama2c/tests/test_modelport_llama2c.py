"""Tests for modelport-llama2c, through the modelport pytest plugin.

pyproject.toml lists this plugin and modelport-hf in ``modelport_plugins``. The
tests write llama2.c files at run time from a kit model (Hugging Face layout,
random weights, written by the real libraries), then check that modelport runs
the llama2.c file exactly as it runs the Hugging Face original.
"""

import struct

import modelport
import numpy as np
import pytest
from modelport.errors import InvalidConfigError, UnsupportedFormatError
from modelport.testing import check_tokenizer, make_tiny_model
from safetensors.numpy import load_file

# A small llama2.c vocabulary: 3 specials, 256 byte tokens, printable ASCII, then merges by priority.
MERGES = [b"th", b"he", b" t", b" th", b"the", b" the", b"at", b" c", b" ca", b" cat", b" s", b" sa", b" sat"]
PIECES = [b"<unk>", b"\n<s>\n", b"\n</s>\n", *(f"<0x{b:02X}>".encode() for b in range(256))]
PIECES += [bytes([c]) for c in range(32, 127)] + MERGES
SCORES = [0.0] * 259 + [-1000.0] * 95 + [-float(i) for i in range(len(MERGES))]
VOCAB = len(PIECES)  # 367


def write_tokenizer(path, pieces=PIECES, scores=SCORES):
    with path.open("wb") as f:
        f.write(struct.pack("<i", max(len(p) for p in pieces)))
        for piece, score in zip(pieces, scores, strict=True):
            f.write(struct.pack("<fi", score, len(piece)) + piece)
    return path


def _interleave(w, n_heads):
    """Hugging Face q/k rows (rotate_half) back to llama2.c's interleaved RoPE pairs."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def export_llama2c(hf_folder, path, *, shared):
    """Write the kit model at ``hf_folder`` as a llama2.c checkpoint, the layout run.c reads."""
    import json

    config = json.loads((hf_folder / "config.json").read_text())
    w = load_file(hf_folder / "model.safetensors")
    layers, heads, kv_heads = config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]
    dim, vocab = config["hidden_size"], config["vocab_size"]
    seq_len, head_size = config["max_position_embeddings"], dim // heads

    def stacked(name, fix=None):
        return np.stack([(fix or (lambda t: t))(w[f"model.layers.{i}.{name}"]) for i in range(layers)])

    tensors = [
        w["model.embed_tokens.weight"],
        stacked("input_layernorm.weight"),
        stacked("self_attn.q_proj.weight", lambda t: _interleave(t, heads)),
        stacked("self_attn.k_proj.weight", lambda t: _interleave(t, kv_heads)),
        stacked("self_attn.v_proj.weight"),
        stacked("self_attn.o_proj.weight"),
        stacked("post_attention_layernorm.weight"),
        stacked("mlp.gate_proj.weight"),
        stacked("mlp.down_proj.weight"),
        stacked("mlp.up_proj.weight"),
        w["model.norm.weight"],
        np.zeros((seq_len, head_size // 2 * 2)),  # freq_cis_real and freq_cis_imag, unused by modelport
    ]
    if not shared:
        tensors.append(w["lm_head.weight"])
    header = (dim, config["intermediate_size"], layers, heads, kv_heads, vocab if shared else -vocab, seq_len)
    with path.open("wb") as f:
        f.write(struct.pack("<7i", *header))
        for tensor in tensors:
            f.write(np.ascontiguousarray(tensor, dtype="<f4").tobytes())
    return path


def make_pair(tmp_path, *, shared):
    """A kit model and the same weights as a llama2.c checkpoint with its tokenizer.bin beside it."""
    hf = make_tiny_model(
        tmp_path / "hf", tokenizer=False, vocab_size=VOCAB, rms_norm_eps=1e-5, tie_word_embeddings=shared
    )
    folder = tmp_path / "llama2c"
    folder.mkdir()
    write_tokenizer(folder / "tokenizer.bin")
    return hf, export_llama2c(hf, folder / "model.bin", shared=shared)


def test_the_plugin_registers_its_format_tokenizer_and_weights(modelport_host):
    registry = modelport_host.registry
    assert "llama2c" in registry.names("config_format")
    assert "llama2c" in registry.names("tokenizer_mode")
    assert "llama2c" in registry.names("load_format")


def test_a_checkpoint_resolves_from_its_header_in_float32(tmp_path):
    _, checkpoint = make_pair(tmp_path, shared=True)
    resolved = modelport.resolve(str(checkpoint))
    assert resolved.config_format == "llama2c"
    assert (resolved.facts.num_hidden_layers, resolved.facts.hidden_size, resolved.facts.num_kv_heads) == (2, 64, 2)
    assert resolved.dtype == "float32"  # the format's default, not bfloat16
    assert resolved.tokenizer.files == ("tokenizer.bin",)
    assert resolved.weight_files.files == ("model.bin",)
    [facts] = resolved.trace.find("facts")
    assert facts.reason.startswith("dtype float32: the 'llama2c' format's default")


def _greedy(reference, prompt_ids, **options):
    llm = modelport.LLM(reference, skip_tokenizer_init=True, **options)
    params = modelport.SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=-1)
    return llm.generate([{"prompt_token_ids": prompt_ids}], params)[0].outputs[0]


def test_a_checkpoint_with_its_own_classifier_generates_what_its_original_generates(tmp_path):
    hf, checkpoint = make_pair(tmp_path, shared=False)
    ours = _greedy(str(checkpoint), [1, 300, 40, 77])
    original = _greedy(str(hf), [1, 300, 40, 77], dtype="float32")
    assert ours.token_ids == original.token_ids
    first, expected = ours.logprobs[0], original.logprobs[0]
    assert max(abs(first[t].logprob - expected[t].logprob) for t in range(VOCAB)) < 1e-4


def test_a_checkpoint_with_a_shared_classifier_generates_what_its_original_generates(tmp_path):
    hf, checkpoint = make_pair(tmp_path, shared=True)
    loaded = modelport.load(str(checkpoint))
    assert loaded.weights.missing == () and loaded.weights.unexpected == ()
    assert _greedy(str(checkpoint), [1, 5, 6]).token_ids == _greedy(str(hf), [1, 5, 6], dtype="float32").token_ids


def test_the_tokenizer_keeps_the_protocol_and_merges_by_score(tmp_path):
    _, checkpoint = make_pair(tmp_path, shared=True)
    tokenizer = modelport.load(str(checkpoint)).tokenizer
    ids = check_tokenizer(tokenizer, "the cat sat")
    assert [PIECES[i] for i in ids] == [b"\n<s>\n", b" the", b" cat", b" sat"]
    # A character outside the vocabulary falls back to its UTF-8 bytes, and decodes back.
    assert tokenizer.encode("é")[2:] == [0xC3 + 3, 0xA9 + 3]
    assert tokenizer.decode(tokenizer.encode("é the"), skip_special_tokens=True) == "é the"


def test_text_generation_goes_through_the_tokenizer(tmp_path):
    _, checkpoint = make_pair(tmp_path, shared=True)
    llm = modelport.LLM(str(checkpoint))
    [output] = llm.generate("the cat", modelport.SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    completion = output.outputs[0]
    assert len(completion.token_ids) == 6
    assert completion.text == llm.get_tokenizer().decode(completion.token_ids, skip_special_tokens=True)


def test_a_truncated_checkpoint_is_not_taken_for_llama2c(tmp_path):
    _, checkpoint = make_pair(tmp_path, shared=True)
    checkpoint.write_bytes(checkpoint.read_bytes()[:-4])
    with pytest.raises(UnsupportedFormatError):
        modelport.resolve(str(checkpoint))
    with pytest.raises(InvalidConfigError, match="the header implies") as caught:
        modelport.resolve(str(checkpoint), config_format="llama2c")
    assert caught.value.file == str(checkpoint) and caught.value.field == "header"
