"""modelport-transformers: the Transformers backend for modelport."""

__version__ = "0.1.0"
