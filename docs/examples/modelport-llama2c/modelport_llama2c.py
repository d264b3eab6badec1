"""modelport-llama2c: llama2.c checkpoints as a modelport format, config, tokenizer and weights.

A llama2.c checkpoint is one file: a header of seven int32 (dim, hidden_dim,
n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means
the classifier is not shared with the embedding), then float32 tensors in a
fixed order. Its tokenizer is a separate tokenizer.bin beside it: the longest
token's length, then for each token a float32 merge score, an int32 length and
the token's bytes. The model is a Llama, so core's native LlamaForCausalLM runs
it; this plugin turns the header into a LlamaConfig, streams the tensors under
Hugging Face names, and wraps the tokenizer in the tokenizer protocol.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelport import Decision, TokenizerSpec, WeightFiles, hookimpl
from modelport.errors import InvalidConfigError, TokenizerError, WeightsCorruptError

FORMAT = "llama2c"
HEADER = struct.Struct("<7i")
FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
BOS, EOS = 1, 2  # llama2.c's token ids: 0 is <unk>


def read_header(path: Path) -> dict[str, int] | None:
    """The header's fields, with ``shared`` for the sign of vocab_size; None if the file cannot hold one."""
    with path.open("rb") as f:
        raw = f.read(HEADER.size)
    if len(raw) < HEADER.size:
        return None
    header = dict(zip(FIELDS, HEADER.unpack(raw), strict=True))
    header["shared"] = int(header["vocab_size"] > 0)
    header["vocab_size"] = abs(header["vocab_size"])
    return header


def tensor_shapes(h: dict[str, int]) -> list[tuple[str, tuple[int, ...]]]:
    """The file's tensors after the header, in order, with their shapes (layers first where stacked)."""
    head_size = h["dim"] // h["n_heads"]
    kv_dim = head_size * h["n_kv_heads"]
    layers, dim, hidden = h["n_layers"], h["dim"], h["hidden_dim"]
    shapes = [
        ("embed", (h["vocab_size"], dim)),
        ("rms_att", (layers, dim)),
        ("wq", (layers, dim, dim)),
        ("wk", (layers, kv_dim, dim)),
        ("wv", (layers, kv_dim, dim)),
        ("wo", (layers, dim, dim)),
        ("rms_ffn", (layers, dim)),
        ("w1", (layers, hidden, dim)),
        ("w2", (layers, dim, hidden)),
        ("w3", (layers, hidden, dim)),
        ("rms_final", (dim,)),
        ("freq_cis_real", (h["seq_len"], head_size // 2)),
        ("freq_cis_imag", (h["seq_len"], head_size // 2)),
    ]
    if not h["shared"]:
        shapes.append(("wcls", (h["vocab_size"], dim)))
    return shapes


def expected_size(h: dict[str, int]) -> int:
    """The file size the header implies, in bytes."""
    count = 0
    for _, shape in tensor_shapes(h):
        n = 1
        for d in shape:
            n *= d
        count += n
    return HEADER.size + 4 * count


def _checked_header(path: Path) -> dict[str, int] | str:
    """The header, or why the file is not a llama2.c checkpoint."""
    h = read_header(path)
    if h is None:
        return "shorter than a llama2.c header"
    if min(h[f] for f in FIELDS) <= 0 or h["dim"] % h["n_heads"] or h["n_heads"] % h["n_kv_heads"]:
        return f"header fields {[h[f] for f in FIELDS]} are not a llama2.c model's"
    if (h["dim"] // h["n_heads"]) % 2:
        return f"head size {h['dim'] // h['n_heads']} is odd"
    if path.stat().st_size != expected_size(h):
        return f"the header implies {expected_size(h)} bytes, the file has {path.stat().st_size}"
    return h


@hookimpl
def modelport_register_config_formats(register):
    # llama2.c models are float32 and run.c computes in float32: bfloat16 would drift from it.
    register(FORMAT, "a llama2.c checkpoint: one file, int32 header and float32 tensors", default_dtype="float32")


@hookimpl
def modelport_register_tokenizer_modes(register):
    register(FORMAT, "llama2.c's tokenizer.bin: scored pieces merged by score, byte fallback")


@hookimpl
def modelport_register_load_formats(register):
    register(FORMAT, "the float32 tensors of a llama2.c checkpoint")


@hookimpl
def modelport_detect_config_format(source):
    # From the file's content, never its name: a header whose sizes add up to the file's size.
    if not source.primary_file:
        return None
    header = _checked_header(source.fetch(source.primary_file))
    if isinstance(header, str):
        return None
    return Decision(FORMAT, f"{source.primary_file}: a llama2.c header whose tensor sizes add up to the file")


@hookimpl
def modelport_parse_config(source, config_format):
    if config_format != FORMAT:
        return None
    if not source.primary_file:
        raise InvalidConfigError(source.location, "a llama2.c model is one file: give its path", field="reference")
    path = source.fetch(source.primary_file)
    h = _checked_header(path)
    if isinstance(h, str):
        raise InvalidConfigError(str(path), f"not a llama2.c checkpoint: {h}", field="header")
    from transformers import LlamaConfig

    return LlamaConfig(
        architectures=["LlamaForCausalLM"],
        hidden_size=h["dim"],
        intermediate_size=h["hidden_dim"],
        num_hidden_layers=h["n_layers"],
        num_attention_heads=h["n_heads"],
        num_key_value_heads=h["n_kv_heads"],
        vocab_size=h["vocab_size"],
        max_position_embeddings=h["seq_len"],
        rms_norm_eps=1e-5,  # run.c's constant
        rope_theta=10000.0,
        tie_word_embeddings=bool(h["shared"]),
        bos_token_id=BOS,
        eos_token_id=EOS,
    )


@hookimpl
def modelport_resolve_tokenizer(source, options, config_format):
    if config_format != FORMAT or options.tokenizer_mode not in ("auto", FORMAT):
        return None
    if not source.exists("tokenizer.bin"):
        return None  # core then says no tokenizer was found, and how to go without one
    return TokenizerSpec(FORMAT, source, ("tokenizer.bin",), "tokenizer.bin beside the checkpoint")


@hookimpl
def modelport_load_tokenizer(spec, hf_config):
    if spec.mode != FORMAT:
        return None
    return Llama2cTokenizer.from_file(spec.source.fetch("tokenizer.bin"), hf_config.vocab_size)


@hookimpl
def modelport_select_weight_files(source, config_format, options):
    if config_format != FORMAT or options.load_format not in ("auto", FORMAT) or not source.primary_file:
        return None
    return WeightFiles(FORMAT, source, (source.primary_file,), reason="the checkpoint holds the weights")


@hookimpl
def modelport_iter_weights(weights):
    if weights.load_format != FORMAT:
        return None
    return _iter_weights(weights.source.fetch(weights.files[0]))


def _permute(w: Any, n_heads: int) -> Any:
    """q/k rows from llama2.c's interleaved RoPE pairs to the Hugging Face (rotate_half) order."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _iter_weights(path: Path) -> Iterator[tuple[str, Any]]:
    import numpy as np
    import torch

    h = _checked_header(path)
    if isinstance(h, str):
        raise WeightsCorruptError(str(path), f"not a llama2.c checkpoint: {h}")
    per_layer = {
        "rms_att": "input_layernorm.weight",
        "wq": "self_attn.q_proj.weight",
        "wk": "self_attn.k_proj.weight",
        "wv": "self_attn.v_proj.weight",
        "wo": "self_attn.o_proj.weight",
        "rms_ffn": "post_attention_layernorm.weight",
        "w1": "mlp.gate_proj.weight",
        "w2": "mlp.down_proj.weight",
        "w3": "mlp.up_proj.weight",
    }
    whole = {"embed": "model.embed_tokens.weight", "rms_final": "model.norm.weight", "wcls": "lm_head.weight"}
    offset = HEADER.size
    for key, shape in tensor_shapes(h):
        size = 1
        for d in shape:
            size *= d
        if key in per_layer or key in whole:
            # np.fromfile reads into fresh memory: no yielded tensor shares a buffer with another.
            data = np.fromfile(path, dtype="<f4", count=size, offset=offset).reshape(shape)
            if key in whole:
                yield whole[key], torch.from_numpy(data)
            else:
                for layer in range(h["n_layers"]):
                    w = data[layer]
                    if key in ("wq", "wk"):
                        w = _permute(w, h["n_heads"] if key == "wq" else h["n_kv_heads"])
                    yield f"model.layers.{layer}.{per_layer[key]}", torch.from_numpy(np.ascontiguousarray(w))
        offset += 4 * size  # freq_cis_* are skipped: the model computes RoPE itself


class Llama2cTokenizer:
    """llama2.c's tokenizer (run.c's encode and decode), keeping modelport's tokenizer protocol."""

    eos_token_id = EOS
    bos_token_id = BOS
    all_special_ids = (0, BOS, EOS)

    def __init__(self, pieces: list[bytes], scores: list[float]) -> None:
        self.pieces = pieces
        self.scores = scores
        self.ids = {piece: i for i, piece in enumerate(pieces)}

    @classmethod
    def from_file(cls, path: Path, vocab_size: int) -> Llama2cTokenizer:
        """Read ``tokenizer.bin``, which must hold exactly ``vocab_size`` tokens."""
        data = path.read_bytes()
        pieces, scores, at = [], [], 4  # the first int32 is the longest token's length
        try:
            for _ in range(vocab_size):
                score, length = struct.unpack_from("<fi", data, at)
                at += 8
                if length < 0 or at + length > len(data):
                    raise struct.error(f"token {len(pieces)} claims {length} bytes")
                pieces.append(data[at : at + length])
                scores.append(score)
                at += length
        except struct.error as exc:
            raise TokenizerError(str(path), f"not a llama2.c tokenizer for {vocab_size} tokens: {exc}") from exc
        if at != len(data):
            raise TokenizerError(str(path), f"{len(data) - at} bytes left after {vocab_size} tokens")
        return cls(pieces, scores)

    def encode(self, text: str) -> list[int]:
        """BOS, then run.c's encoding: a dummy prefix space, characters (bytes as a fallback), merges by score."""
        ids = [BOS]
        if not text:
            return ids
        ids.append(self.ids[b" "])
        for char in text:
            piece = char.encode("utf-8")
            if piece in self.ids:
                ids.append(self.ids[piece])
            else:
                ids.extend(byte + 3 for byte in piece)  # <0x00> is token 3
        while True:
            best, at = None, -1
            for i in range(1, len(ids) - 1):
                merged = self.ids.get(self.pieces[ids[i]] + self.pieces[ids[i + 1]])
                if merged is not None and (best is None or self.scores[merged] > self.scores[best]):
                    best, at = merged, i
            if best is None:
                return ids
            ids[at : at + 2] = [best]

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        """The text of ``ids``: ``<0xXX>`` pieces are bytes, and a piece right after BOS loses its leading space."""
        out, previous = bytearray(), None
        for token in ids:
            token = int(token)
            piece = self.pieces[token]
            if previous == BOS and piece.startswith(b" "):
                piece = piece[1:]
            previous = token
            if skip_special_tokens and token in self.all_special_ids:
                continue
            if len(piece) == 6 and piece.startswith(b"<0x") and piece.endswith(b">"):
                piece = bytes([int(piece[3:5], 16)])
            out += piece
        return out.decode("utf-8", errors="replace")
