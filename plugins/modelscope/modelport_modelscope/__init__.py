"""modelport-modelscope: ModelScope repositories as a source for modelport, through the real modelscope client."""

__version__ = "0.1.0"
