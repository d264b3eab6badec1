"""Mistral-native model folders, written from a tiny Hugging Face model of the kit.

:func:`make_mistral_folder` turns a folder written by
:func:`~modelport.testing.make_tiny_model` (llama, mistral or mixtral) into the
layout Mistral publishes: ``params.json``, consolidated weights with
Mistral's names and its interleaved rotary layout (the inverse of the
permutation Hugging Face's conversion script applies to ``wq``/``wk``), and a
tokenizer that mistral-common loads (``tekken.json`` or a SentencePiece
``tokenizer.model.v3``). A model loaded from both folders must give the same
logits, which is what the modelport-mistral tests check.

The tekken file is built here from a small byte-level BPE trained on a short
text (the JSON layout mistral-common's ``Tekkenizer.from_file`` reads); the
SentencePiece model is trained with the ``sentencepiece`` library. Nothing
here imports mistral-common, so the kit stays usable without it.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: The special tokens of a tekken file, in rank order (mistral-common's names for them).
TEKKEN_SPECIAL_TOKENS = (
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
    "[ARGS]",
    "[CALL_ID]",
    "[AUDIO]",
    "[BEGIN_AUDIO]",
    "[TRANSCRIBE]",
    "[THINK]",
    "[/THINK]",
    "[STREAMING_PAD]",
    "[STREAMING_WORD]",
    "[NEXT_AUDIO_TEXT]",
    "[REPEAT_AUDIO_TEXT]",
    "[MODEL_SETTINGS]",
    "[/MODEL_SETTINGS]",
)
#: Control symbols a version-3 SentencePiece model of Mistral's holds after ``<unk>``, ``<s>``, ``</s>``.
SENTENCEPIECE_CONTROL_SYMBOLS = (
    "[INST]",
    "[/INST]",
    "[TOOL_CALLS]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
)
#: The pre-tokenisation pattern written into kit tekken files (tiktoken's regex syntax).
TEKKEN_PATTERN = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

_TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. A model loader finds the files,
reads the config, picks the architecture, loads the tokenizer and streams the
weights. Hello world! Numbers like 12345 and symbols like #, @ and % appear too.
It was the best of times, it was the worst of times, it was the age of wisdom,
it was the age of foolishness, it was the epoch of belief, it was the epoch of
incredulity, it was the season of Light, it was the season of Darkness.
Mistral models ship params.json and consolidated weights; the tokenizer is tekken.
"""
# Python's re has no \p{...}: training splits words the same way with plain classes.
_TRAINING_SPLIT = re.compile(r"[^\r\n\w]?[^\W\d_]+|\d| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

#: Hugging Face parameter names (after ``model.layers.N.``) and their consolidated names.
_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "block_sparse_moe.gate.weight": "feed_forward.gate.weight",
}
_TOP_NAMES = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$")


def consolidated_name(hf_name: str) -> str:
    """The consolidated (Mistral) name of a Hugging Face parameter name.

    Raises:
        ValueError: a name with no consolidated counterpart.
    """
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    match = _LAYER.match(hf_name)
    if match:
        layer, rest = match.groups()
        if rest in _LAYER_NAMES:
            return f"layers.{layer}.{_LAYER_NAMES[rest]}"
        expert = _EXPERT.match(rest)
        if expert:
            return f"layers.{layer}.feed_forward.experts.{expert[1]}.{expert[2]}.weight"
    raise ValueError(f"no consolidated name for {hf_name!r}")


def to_interleaved_rope(weight: Any, n_heads: int) -> Any:
    """Undo Hugging Face's rotary permutation of a ``q``/``k`` projection (rows grouped in pairs again)."""
    rows, cols = weight.shape
    half = rows // n_heads // 2
    return weight.reshape(n_heads, 2, half, cols).transpose(1, 2).reshape(rows, cols)


def params_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A ``params.json`` dict for a Hugging Face config dict (llama, mistral or mixtral)."""
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    rope = config.get("rope_parameters") or {}
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    params: dict[str, Any] = {
        "dim": hidden,
        "n_layers": int(config["num_hidden_layers"]),
        "head_dim": int(config.get("head_dim") or hidden // heads),
        "hidden_dim": int(config["intermediate_size"]),
        "n_heads": heads,
        "n_kv_heads": int(config.get("num_key_value_heads") or heads),
        "norm_eps": float(config.get("rms_norm_eps", 1e-5)),
        "vocab_size": int(config["vocab_size"]),
        "rope_theta": float(theta),
        "max_seq_len": int(config["max_position_embeddings"]),
    }
    if config.get("tie_word_embeddings"):
        params["tied_embeddings"] = True
    if config.get("sliding_window"):
        params["sliding_window"] = int(config["sliding_window"])
    if config.get("num_local_experts"):
        params["moe"] = {
            "num_experts": int(config["num_local_experts"]),
            "num_experts_per_tok": int(config["num_experts_per_tok"]),
        }
    return params


def _train_byte_bpe(text: str, merges: int) -> list[bytes]:
    """The 256 single bytes, then up to ``merges`` merged tokens, most frequent pair first."""
    vocab = [bytes([i]) for i in range(256)]
    words = Counter(_TRAINING_SPLIT.findall(text))
    pieces = {word: [bytes([b]) for b in word.encode("utf-8")] for word in words}
    for _ in range(merges):
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            parts = pieces[word]
            for pair in itertools.pairwise(parts):
                pairs[pair] += count
        if not pairs:
            break
        (left, right), _count = max(pairs.items(), key=lambda item: (item[1], item[0]))
        merged = left + right
        vocab.append(merged)
        for word, parts in pieces.items():
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == left and parts[i + 1] == right:
                    out.append(merged)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            pieces[word] = out
    return vocab


def write_tekken(
    path: str | os.PathLike[str],
    *,
    vocab_size: int = 384,
    num_special_tokens: int = 40,
    version: str = "v7",
    text: str = _TRAINING_TEXT,
) -> Path:
    """Write a tekken tokenizer file at ``path`` (a ``tekken.json``) and return ``path``.

    Args:
        path: the file to write.
        vocab_size: special tokens plus ordinary tokens, at most; fewer when the
            text offers fewer merges.
        num_special_tokens: ranks reserved for special tokens (the named ones of
            :data:`TEKKEN_SPECIAL_TOKENS`, then ``<SPECIAL_N>`` fillers).
        version: the tokenizer version mistral-common reads (``v3``, ``v7``, ``v11``, ``v13``...).
        text: the training text.
    """
    path = Path(path)
    if num_special_tokens < len(TEKKEN_SPECIAL_TOKENS):
        raise ValueError(f"num_special_tokens must be at least {len(TEKKEN_SPECIAL_TOKENS)}")
    inner = _train_byte_bpe(text, max(0, vocab_size - num_special_tokens - 256))
    specials = [*TEKKEN_SPECIAL_TOKENS] + [
        f"<SPECIAL_{i}>" for i in range(len(TEKKEN_SPECIAL_TOKENS), num_special_tokens)
    ]
    data = {
        "config": {
            "pattern": TEKKEN_PATTERN,
            "num_vocab_tokens": len(inner),
            "default_vocab_size": num_special_tokens + len(inner),
            "default_num_special_tokens": num_special_tokens,
            "version": version,
        },
        "vocab": [
            {
                "rank": rank,
                "token_bytes": base64.b64encode(token).decode("ascii"),
                "token_str": token.decode("utf-8", errors="replace") if _is_utf8(token) else None,
            }
            for rank, token in enumerate(inner)
        ],
        "special_tokens": [
            {"rank": rank, "token_str": token, "is_control": True} for rank, token in enumerate(specials)
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def _is_utf8(token: bytes) -> bool:
    try:
        token.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def write_sentencepiece(path: str | os.PathLike[str], *, vocab_size: int = 320, text: str = _TRAINING_TEXT) -> Path:
    """Train a SentencePiece BPE model on ``text`` and write it at ``path`` (``tokenizer.model.v3``, say).

    Ids 0, 1, 2 are ``<unk>``, ``<s>``, ``</s>``, followed by Mistral's control
    symbols (``[INST]``, ``[/INST]``...); unknown bytes fall back to byte pieces.
    ``vocab_size`` is an upper bound: the trainer stops when the text runs out.
    """
    path = Path(path)
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines() * 4),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        control_symbols=list(SENTENCEPIECE_CONTROL_SYMBOLS),
        minloglevel=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path


def make_mistral_folder(
    hf_folder: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    tokenizer: str | None = "tekken",
    weights: str = "safetensors",
    shards: int = 1,
    params: Mapping[str, Any] | None = None,
    drop_params: Sequence[str] = (),
    tokenizer_version: str = "v7",
) -> Path:
    """Write the Mistral-native form of the kit model in ``hf_folder`` into ``path``; return ``path``.

    Args:
        hf_folder: a folder written by :func:`~modelport.testing.make_tiny_model`
            (config.json and ``model.safetensors``).
        path: the folder to write (may exist; may be ``hf_folder`` itself, to hold both layouts).
        tokenizer: ``"tekken"`` (``tekken.json``), ``"sentencepiece"``
            (``tokenizer.model.v3``) or ``None``.
        weights: ``"safetensors"`` (``consolidated.safetensors``, or shards with
            ``consolidated.safetensors.index.json``), ``"pth"``
            (``consolidated.00.pth``, a ``torch.save`` state dict) or ``None``.
        shards: how many safetensors shards to write (``consolidated-0000N-of-0000M.safetensors``).
        params: keys to add to (or replace in) ``params.json``.
        drop_params: keys to leave out of ``params.json``.
        tokenizer_version: the tekken version to write.
    """
    hf_folder, path = Path(hf_folder), Path(path)
    import torch
    from safetensors.torch import load_file, save_file

    config = json.loads((hf_folder / "config.json").read_text(encoding="utf-8"))
    path.mkdir(parents=True, exist_ok=True)
    written = params_from_config(config)
    written.update(params or {})
    for key in drop_params:
        written.pop(key, None)
    (path / "params.json").write_text(json.dumps(written, indent=2), encoding="utf-8")

    if weights is not None:
        state = load_file(str(hf_folder / "model.safetensors"))
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        out: dict[str, Any] = {}
        for name, tensor in state.items():
            if name == "lm_head.weight" and config.get("tie_word_embeddings"):
                continue
            if name.endswith("self_attn.q_proj.weight"):
                tensor = to_interleaved_rope(tensor, heads)
            elif name.endswith("self_attn.k_proj.weight"):
                tensor = to_interleaved_rope(tensor, kv_heads)
            out[consolidated_name(name)] = tensor.contiguous()
        if weights == "pth":
            torch.save(out, path / "consolidated.00.pth")
        elif weights == "safetensors" and shards == 1:
            save_file(out, str(path / "consolidated.safetensors"), metadata={"format": "pt"})
        elif weights == "safetensors":
            names = sorted(out)
            weight_map: dict[str, str] = {}
            for i in range(shards):
                shard = f"consolidated-{i + 1:05d}-of-{shards:05d}.safetensors"
                part = {n: out[n] for n in names[i::shards]}
                save_file(part, str(path / shard), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(part, shard))
            index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
            (path / "consolidated.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
        else:
            raise ValueError(f"weights must be 'safetensors', 'pth' or None, got {weights!r}")

    if tokenizer == "tekken":
        write_tekken(path / "tekken.json", vocab_size=int(config["vocab_size"]), version=tokenizer_version)
    elif tokenizer == "sentencepiece":
        write_sentencepiece(path / "tokenizer.model.v3", vocab_size=min(int(config["vocab_size"]), 320))
    elif tokenizer is not None:
        raise ValueError(f"tokenizer must be 'tekken', 'sentencepiece' or None, got {tokenizer!r}")
    return path
