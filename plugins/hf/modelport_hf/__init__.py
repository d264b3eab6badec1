"""modelport-hf: the Hugging Face path for modelport."""

__version__ = "0.1.0"
