"""modelport-gguf: GGUF files for modelport (references, header, config, tokenizer, weights)."""

__version__ = "0.1.0"
