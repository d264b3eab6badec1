"""modelport-cuda: the CUDA executor for modelport (continuous batching on NVIDIA GPUs)."""

__version__ = "0.1.0"
