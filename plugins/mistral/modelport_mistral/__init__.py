"""modelport-mistral: Mistral-native models for modelport (a skeleton for now)."""

__version__ = "0.1.0"
