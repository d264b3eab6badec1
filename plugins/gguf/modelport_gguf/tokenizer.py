"""A fast Hugging Face tokenizer from GGUF tokenizer metadata."""

from __future__ import annotations

from typing import Any

from modelport.errors import TokenizerError


def build_tokenizer(header: Any) -> Any:
    """Not built yet: a typed error (the next commit builds it)."""
    raise TokenizerError(str(header.path), "building a tokenizer from GGUF metadata is not implemented yet")
