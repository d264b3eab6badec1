"""modelport-modelscope: ModelScope repositories as a source for modelport (a skeleton for now)."""

__version__ = "0.1.0"
