"""Fixtures shared by the plugins' tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def short_template_budget() -> Iterator[None]:
    """Chat templates get 1 s (5 s by default) while the module's tests run, so an endless one stops quickly.

    modelport-hf's budget (``chat_template.TEMPLATE_SECONDS``) also serves the GGUF and Mistral tokenizers.
    """
    chat_template = pytest.importorskip("modelport_hf.chat_template", reason="the template budget is modelport-hf's")
    saved, chat_template.TEMPLATE_SECONDS = chat_template.TEMPLATE_SECONDS, 1.0
    yield
    chat_template.TEMPLATE_SECONDS = saved
