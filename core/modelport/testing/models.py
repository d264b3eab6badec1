"""Tiny models in a temporary folder, written by the real libraries.

config.json comes from ``PretrainedConfig.save_pretrained``, the tokenizer is
a byte-level BPE trained with the ``tokenizers`` library and saved through
``PreTrainedTokenizerFast.save_pretrained``, and the weights are a randomly
initialised transformers model saved with ``save_pretrained`` (safetensors),
or ``torch.save`` of its state dict for the ``.bin`` form.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Architectures the kit can build: short name -> (config class, architecture name).
TINY_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
}

_TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. A model loader finds the files,
reads the config, picks the architecture, loads the tokenizer and streams the
weights. Hello world! Numbers like 12345 and symbols like #, @ and % appear too.
It was the best of times, it was the worst of times, it was the age of wisdom.
"""

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def make_tokenizer(path: str | os.PathLike[str], vocab_size: int = 384, text: str = _TRAINING_TEXT) -> Any:
    """Train a byte-level BPE tokenizer on ``text`` and save it (tokenizer.json and friends) in ``path``.

    Returns the ``PreTrainedTokenizerFast``. Token ids 0, 1, 2 are ``<unk>``, ``<s>``, ``</s>``.
    """
    path = Path(path)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", chat_template=CHAT_TEMPLATE
    )
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(path)
    return fast


def make_tiny_model(
    path: str | os.PathLike[str],
    architecture: str = "llama",
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 256,
    vocab_size: int | None = None,
    dtype: str = "float32",
    tokenizer: bool = True,
    weights: str | None = "safetensors",
    max_shard_size: int | str | None = None,
    seed: int = 0,
    **config_overrides: Any,
) -> Path:
    """Write a tiny Hugging Face model folder at ``path`` and return ``path``.

    Args:
        path: the folder to create (may exist).
        architecture: a key of :data:`TINY_ARCHITECTURES`.
        hidden_size: width of the model.
        num_hidden_layers: number of decoder layers.
        num_attention_heads: attention heads per layer.
        num_key_value_heads: key/value heads per layer (grouped-query attention when fewer).
        intermediate_size: width of the MLP.
        max_position_embeddings: the context length the config states.
        vocab_size: defaults to the tokenizer's size (384 without a tokenizer).
        dtype: the dtype the weights are saved in (``config.dtype``).
        tokenizer: also write tokenizer files.
        weights: ``"safetensors"``, ``"bin"`` (``pytorch_model.bin``) or ``None`` for config only.
        max_shard_size: shard the safetensors weights (writes ``model.safetensors.index.json``).
        seed: random seed for the weights.
        **config_overrides: more config fields (``rope_scaling``, ``sliding_window``, ``num_local_experts``...).
    """
    path = Path(path)
    import torch
    import transformers

    if architecture not in TINY_ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {architecture!r}; choose from {sorted(TINY_ARCHITECTURES)}")
    config_name, arch_name = TINY_ARCHITECTURES[architecture]
    path.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(path) if tokenizer else None
    if vocab_size is None:
        vocab_size = len(tok) if tok is not None else 384
    config_cls = getattr(transformers, config_name)
    fields: dict[str, Any] = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        vocab_size=vocab_size,
        bos_token_id=1,
        eos_token_id=2,
        architectures=[arch_name],
        dtype=dtype,
    )
    if architecture == "mixtral":
        fields.update(num_local_experts=4, num_experts_per_tok=2)
    fields.update(config_overrides)
    config = config_cls(**fields)
    if weights is None:
        config.save_pretrained(path)
        return path
    torch.manual_seed(seed)
    model_cls = getattr(transformers, arch_name)
    model = model_cls(config).to(getattr(torch, dtype)).eval()
    if weights == "safetensors":
        kwargs: dict[str, Any] = {}
        if max_shard_size is not None:
            kwargs["max_shard_size"] = max_shard_size
        model.save_pretrained(path, **kwargs)
    elif weights == "bin":
        config.save_pretrained(path)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    else:
        raise ValueError(f"weights must be 'safetensors', 'bin' or None, got {weights!r}")
    return path
