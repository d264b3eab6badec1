"""Kit models written to GGUF by gguf-py's own writer (``gguf.GGUFWriter``), as llama.cpp's converter writes them.

:func:`write_gguf` takes a tiny Hugging Face model folder (from
:func:`~modelport.testing.make_tiny_model`) and writes its config as GGUF
metadata, its byte-level BPE tokenizer as ``tokenizer.ggml.*`` (model
``gpt2``), and its tensors under llama.cpp's names, with the query and key
rows permuted the way llama.cpp's converter permutes them for rotary
embeddings. Matrices are stored in the requested ggml type (``F32``,
``F16``, ``BF16``, ``Q8_0``, ``Q4_0``, ``Q4_1``, ``Q5_0``, ``Q5_1``:
quantised by ``gguf.quants.quantize``; the K-quants, which gguf-py cannot
quantise, as random valid blocks when ``random_k_quants`` is set);
one-dimensional tensors stay F32, as llama.cpp keeps them.
:func:`make_tiny_gguf` does both steps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: GGUF ``general.architecture`` for each kit architecture.
GGUF_ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mixtral": "llama"}

_NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "mlp.gate": "ffn_gate_inp",
}


def gguf_tensor_name(hf_name: str) -> str:
    """llama.cpp's name for a Hugging Face decoder tensor name.

    ``model.layers.0.self_attn.q_proj.weight`` becomes ``blk.0.attn_q.weight``.
    """
    base, _, suffix = hf_name.rpartition(".")
    if base.startswith("model.layers."):
        _, _, rest = base.partition("model.layers.")
        block, _, module = rest.partition(".")
        return f"blk.{block}.{_NAMES[module]}.{suffix}"
    return f"{_NAMES[base]}.{suffix}"


def permute_rotary(weights: Any, heads: int) -> Any:
    """llama.cpp's converter's permutation of query/key rows (interleaved rotary halves), on a numpy array."""
    rows = weights.shape[0]
    return weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _random_k_blocks(n_elements: int, qtype: Any, seed: int) -> Any:
    """Random bytes forming valid blocks of a K-quant (finite float16 scales), for benchmarks of reading them."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    n = n_elements // block
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    scales = (rng.random((n, 2)) * 0.01).astype(np.float16).view(np.uint8)
    name = qtype.name
    if name in ("Q4_K", "Q5_K"):
        raw[:, 0:4] = scales.reshape(n, 4)
    elif name == "Q6_K":
        raw[:, size - 2 :] = scales[:, 0:2]
    elif name == "Q2_K":
        raw[:, size - 4 :] = scales.reshape(n, 4)
    elif name == "Q3_K":
        raw[:, size - 2 :] = scales[:, 0:2]
    return raw


def write_gguf(
    hf_folder: str | os.PathLike[str],
    path: str | os.PathLike[str],
    ggml_type: str = "F32",
    *,
    split_max_tensors: int = 0,
    random_k_quants: bool = False,
    tokenizer: bool = True,
    gguf_architecture: str | None = None,
) -> Path:
    """Write the kit model in ``hf_folder`` to GGUF at ``path`` and return ``path`` (the first part when split).

    Args:
        hf_folder: a folder written by :func:`~modelport.testing.make_tiny_model` (llama, mistral, qwen2, qwen3).
        path: the ``.gguf`` file to write.
        ggml_type: the type of the two-dimensional tensors (``F32``, ``F16``, ``BF16``, ``Q8_0``, ``Q4_0``...).
        split_max_tensors: split into parts of at most this many tensors (``-00001-of-0000N.gguf`` names).
        random_k_quants: allow K-quant types, written as random valid blocks (the weights are then noise).
        tokenizer: write the ``tokenizer.ggml.*`` metadata.
        gguf_architecture: write this ``general.architecture`` (and key prefix) instead of llama.cpp's.
    """
    hf_folder, path = Path(hf_folder), Path(path)
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize
    from safetensors.numpy import load_file

    config = json.loads((hf_folder / "config.json").read_text())
    model_type = config["model_type"]
    arch = gguf_architecture or GGUF_ARCHITECTURES[model_type]
    permuted = GGUF_ARCHITECTURES[model_type] == "llama"
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    qtype = GGMLQuantizationType[ggml_type]
    if qtype.name.endswith("_K") and not random_k_quants:
        raise ValueError(f"gguf-py cannot quantise {ggml_type}; pass random_k_quants=True for random blocks")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(path, arch, split_max_tensors=split_max_tensors)
    writer.add_name(f"kit-{model_type}")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    rope = config.get("rope_parameters") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0))
    if config.get("head_dim"):
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(int(qtype))
    if tokenizer:
        _write_tokenizer(writer, hf_folder)
    tensors = {}
    for shard in sorted(hf_folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    for hf_name in sorted(tensors):
        values = tensors[hf_name].astype(np.float32)
        name = gguf_tensor_name(hf_name)
        if permuted and hf_name.endswith("self_attn.q_proj.weight"):
            values = permute_rotary(values, heads)
        elif permuted and hf_name.endswith("self_attn.k_proj.weight"):
            values = permute_rotary(values, kv_heads)
        if values.ndim < 2 or qtype == GGMLQuantizationType.F32:
            writer.add_tensor(name, values)
        elif qtype == GGMLQuantizationType.F16:
            writer.add_tensor(name, values.astype(np.float16))
        elif qtype.name.endswith("_K"):
            raw = _random_k_blocks(values.size, qtype, seed=len(name))
            writer.add_tensor(name, raw.reshape(values.shape[0], -1), raw_dtype=qtype)
        else:
            writer.add_tensor(name, quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if split_max_tensors:
        return next(iter(sorted(path.parent.glob(f"{path.stem}-00001-of-*.gguf"))))
    return path


def _write_tokenizer(writer: Any, hf_folder: Path) -> None:
    """The kit's byte-level BPE as llama.cpp writes a ``gpt2`` tokenizer: tokens, types, merges, special ids."""
    data = json.loads((hf_folder / "tokenizer.json").read_text())
    vocab: dict[str, int] = dict(data["model"]["vocab"])
    for added in data.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    special = {a["id"] for a in data.get("added_tokens", []) if a.get("special")}
    tokens = [""] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        tokens[index] = token
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    writer.add_token_merges(merges)
    config = json.loads((hf_folder / "tokenizer_config.json").read_text())
    ids = {t: vocab[t] for t in ("<unk>", "<s>", "</s>") if t in vocab}
    if "<s>" in ids:
        writer.add_bos_token_id(ids["<s>"])
    if "</s>" in ids:
        writer.add_eos_token_id(ids["</s>"])
    if "<unk>" in ids:
        writer.add_unk_token_id(ids["<unk>"])
    writer.add_add_bos_token(False)
    template = config.get("chat_template")
    if template is None and (hf_folder / "chat_template.jinja").is_file():
        template = (hf_folder / "chat_template.jinja").read_text()
    if template:
        writer.add_chat_template(template)


def make_tiny_gguf(
    path: str | os.PathLike[str], ggml_type: str = "F32", architecture: str = "llama", **tiny: Any
) -> Path:
    """A kit model written to GGUF at ``path``; its Hugging Face folder is ``path.parent / (path.stem + "-hf")``."""
    path = Path(path)
    from modelport.testing.models import make_tiny_model

    hf = make_tiny_model(path.parent / f"{path.stem}-hf", architecture, **tiny)
    return write_gguf(hf, path, ggml_type, tokenizer=tiny.get("tokenizer", True))
