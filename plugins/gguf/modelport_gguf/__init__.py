"""modelport-gguf: GGUF files for modelport (a skeleton for now)."""

__version__ = "0.1.0"
