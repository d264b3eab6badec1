"""Fuzzing every reader of untrusted files through resolve() and load() (issue 11, point 8).

One hypothesis test per reader: config.json, the safetensors header, the shard
index, tokenizer_config.json (with its chat template). Each example must end in
a result or an error from ``modelport.errors``, within 5 seconds, with a peak of
Python memory below twice the input's size plus a constant. The normal run
tries a few examples per reader; ``nox -s fuzz`` sets ``MODELPORT_FUZZ_EXAMPLES``
for a long run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import struct
import tempfile
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelport
from modelport.errors import ModelportError
from modelport.testing import make_tiny_model

#: Examples per reader: small in the normal suite, large under ``nox -s fuzz``.
EXAMPLES = int(os.environ.get("MODELPORT_FUZZ_EXAMPLES", "10"))
#: Seconds one example may take (resolve and load together).
SECONDS = 5.0
#: Python memory an example may use besides twice its input (parsers, config objects, tokenizer tables).
MEMORY_CONSTANT = 96 * 2**20

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM to catch a hang")


class Hang(Exception):
    """An example ran past its time budget."""


@contextmanager
def bounded(input_size: int) -> Iterator[None]:
    """Fail on a hang (SIGALRM after SECONDS) or a peak of Python memory above 2 x input + MEMORY_CONSTANT."""

    def alarm(*_: object) -> None:
        raise Hang(f"an example ran for more than {SECONDS} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    signal.setitimer(signal.ITIMER_REAL, SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        peak = tracemalloc.get_traced_memory()[1] - base
        if started:
            tracemalloc.stop()
    assert peak <= 2 * input_size + MEMORY_CONSTANT, f"peak Python memory {peak} bytes for {input_size} bytes of input"


def typed_or_ok(action) -> object:
    """Run ``action``: a result, or an error from modelport.errors; anything else fails the example."""
    try:
        return action()
    except ModelportError as exc:
        return exc


# --- values ------------------------------------------------------------------------------------------------

huge_ints = st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, 10**6, 10**18, -(2**63)])
numbers = (
    st.integers(-(2**70), 2**70)
    | huge_ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 5e-324])
)
scalars = st.none() | st.booleans() | numbers | st.text(max_size=16)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=16,
)


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture(scope="module", autouse=True)
def short_template_budget():
    """Templates get 1 s here, so an endless one is stopped well within the example's 5 s."""
    from modelport_hf import chat_template

    saved, chat_template.TEMPLATE_SECONDS = chat_template.TEMPLATE_SECONDS, 1.0
    yield
    chat_template.TEMPLATE_SECONDS = saved


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("fuzz") / "m", num_hidden_layers=1)


@contextmanager
def copy_of(base: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "m"
        shutil.copytree(base, folder)
        yield folder


def resolve_and_load(folder: Path, **options) -> None:
    resolved = typed_or_ok(lambda: modelport.resolve(str(folder), **options))
    if isinstance(resolved, ModelportError):
        return
    typed_or_ok(lambda: modelport.load(str(folder), **options))


# --- config.json ---------------------------------------------------------------------------------------------

SIZE_KEYS = [
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "intermediate_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_parameters",
    "sliding_window",
    "tie_word_embeddings",
    "torch_dtype",
    "architectures",
]


@FUZZ
@given(
    changes=st.dictionaries(st.sampled_from(SIZE_KEYS), json_values | numbers, max_size=4),
    nesting=st.sampled_from([0, 0, 0, 70, 5000]),
    load_format=st.sampled_from(["auto", "dummy"]),
)
def test_fuzz_config_json_through_resolve_and_load(base, changes, nesting, load_format):
    with copy_of(base) as folder:
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        text = json.dumps(config)
        if nesting:
            text = text[:-1] + ', "deep": ' + deep(nesting) + "}"
        (folder / "config.json").write_text(text)
        with bounded(len(text)):
            resolve_and_load(folder, skip_tokenizer_init=True, load_format=load_format)


# --- safetensors header --------------------------------------------------------------------------------------

DTYPES = ["F32", "F16", "BF16", "I8", "U8", "I64", "BOOL", "F64", "F8_E4M3", "XYZ", ""]
entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(DTYPES) | scalars,
        "shape": st.lists(st.integers(0, 8) | huge_ints, max_size=4) | scalars,
        "data_offsets": st.lists(st.integers(0, 64) | huge_ints, min_size=2, max_size=2) | scalars,
    }
)
NAMES = ["model.norm.weight", "model.embed_tokens.weight", "lm_head.weight", "x", "__metadata__"]


@FUZZ
@given(
    header=st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=8), entries | json_values, max_size=4),
    data=st.binary(max_size=256),
    length=st.none() | huge_ints | st.integers(0, 4096),
)
def test_fuzz_safetensors_header_through_load(base, header, data, length):
    raw = json.dumps(header).encode()
    size = len(raw) if length is None else length
    blob = struct.pack("<Q", size % 2**64) + raw + data
    with copy_of(base) as folder:
        (folder / "model.safetensors").write_bytes(blob)
        with bounded(len(blob)):
            resolve_and_load(folder, skip_tokenizer_init=True, dtype="float32")


# --- model.safetensors.index.json ------------------------------------------------------------------------------

shard_names = st.sampled_from(
    ["model.safetensors", "../model.safetensors", "/etc/passwd", "a/../../b.safetensors", "", "missing.safetensors"]
) | st.text(max_size=12)


@FUZZ
@given(
    index=st.one_of(
        st.fixed_dictionaries(
            {"weight_map": st.dictionaries(st.text(max_size=24), shard_names | json_values, max_size=6)},
            optional={"metadata": json_values},
        ),
        json_values,
    ),
    nesting=st.sampled_from([0, 0, 100, 100_000]),
)
def test_fuzz_shard_index_through_resolve_and_load(base, index, nesting):
    text = json.dumps(index) if not nesting else '{"weight_map": ' + deep(nesting) + "}"
    with copy_of(base) as folder:
        (folder / "model.safetensors.index.json").write_text(text)
        with bounded(len(text)):
            resolve_and_load(folder, skip_tokenizer_init=True, dtype="float32")


# --- tokenizer_config.json and its chat template --------------------------------------------------------------

TEMPLATE_PIECES = [
    "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    "{{ bos_token }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 4000000000 }}",
    "{{ raise_exception('no') }}",
    "{% if add_generation_prompt %}<|assistant|>{% endif %}",
    "{{ messages[0]['content'] * 1000000 }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{{ ''.__class__ }}",
    "{% for %}",
    "{{ '%09999999999d' % 1 }}",
    "{{ messages | tojson(indent=100000000) }}",
]
tokenizer_keys = st.sampled_from(
    [
        "tokenizer_class",
        "model_max_length",
        "bos_token",
        "eos_token",
        "pad_token",
        "added_tokens_decoder",
        "chat_template",
        "auto_map",
        "clean_up_tokenization_spaces",
        "extra_special_tokens",
    ]
)


@FUZZ
@given(
    changes=st.dictionaries(
        tokenizer_keys,
        json_values | st.lists(st.sampled_from(TEMPLATE_PIECES), min_size=1, max_size=3).map("".join),
        max_size=4,
    ),
    nesting=st.sampled_from([0, 0, 0, 100_000]),
)
def test_fuzz_tokenizer_config_through_load_and_chat_template(base, changes, nesting):
    with copy_of(base) as folder:
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config.update(changes)
        text = json.dumps(config) if not nesting else '{"x": ' + deep(nesting) + "}"
        (folder / "tokenizer_config.json").write_text(text)
        with bounded(len(text)):
            loaded = typed_or_ok(lambda: modelport.load(str(folder), load_format="dummy"))
            tokenizer = getattr(loaded, "tokenizer", None)
            if tokenizer is not None and getattr(tokenizer, "chat_template", None):
                typed_or_ok(lambda: tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False))
