"""Fuzzing a real GGUF file through the whole pipeline: load, tokenize, render the chat template.

test_gguf_header.py fuzzes the header reader alone; a file whose header reads
can still hold metadata that the config, the tokenizer or the chat template
trip on. Every example ends in a result or an error from ``modelport.errors``,
within its time budget. ``MODELPORT_FUZZ_EXAMPLES`` sets a long run.
"""

from __future__ import annotations

import os
import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelport
from modelport.errors import ModelportError
from modelport_gguf.header import read_header

EXAMPLES = int(os.environ.get("MODELPORT_FUZZ_EXAMPLES", "25"))
#: Seconds one example may take (the chat template gets 1 s of it).
SECONDS = 20

pytestmark = [
    pytest.mark.skipif(not hasattr(signal, "alarm"), reason="needs SIGALRM to catch a hang"),
    pytest.mark.usefixtures("short_template_budget"),
]


class Hang(Exception):
    """An example ran past its time budget."""


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A kit model written by gguf-py's GGUFWriter, with the kit's chat template; its bytes and regions."""
    from modelport.testing.gguf_files import make_tiny_gguf

    path = make_tiny_gguf(tmp_path_factory.mktemp("fuzz") / "kit.gguf", "Q8_0", num_hidden_layers=1)
    data = path.read_bytes()
    template = read_header(path).get("tokenizer.chat_template").encode()
    start = data.index(template)
    return data, read_header(path).data_offset, (start, start + len(template))


def _through_the_pipeline(path) -> None:
    try:
        loaded = modelport.load(str(path), dtype="float32")
        tokenizer = loaded.tokenizer
        if tokenizer is not None:
            tokenizer.decode(tokenizer.encode("Hello world 123"))
            if getattr(tokenizer, "chat_template", None):
                tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    except ModelportError:
        pass


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzzed_gguf_files_load_or_raise_a_typed_error(tmp_path, original, data):
    raw, header_end, (template_start, template_end) = original
    region = data.draw(st.sampled_from(["metadata", "template", "anywhere"]), label="region")
    low, high = {
        "metadata": (0, header_end),
        "template": (template_start, template_end),
        "anywhere": (0, len(raw)),
    }[region]
    edits = data.draw(
        st.lists(st.tuples(st.integers(low, high - 1), st.integers(0, 255)), min_size=1, max_size=6), label="edits"
    )
    damaged = bytearray(raw)
    for position, value in edits:
        damaged[position] = value
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(bytes(damaged))

    def alarm(*_: object) -> None:
        raise Hang(f"an example ran for more than {SECONDS} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(SECONDS)
    try:
        _through_the_pipeline(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
