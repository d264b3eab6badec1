"""The GGUF header reader validates everything against the file before trusting it."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelport.errors import WeightsCorruptError
from modelport_gguf.header import GGML_TYPES, has_gguf_magic, read_header


def _kv_string(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(v)) + v


def _file(tmp_path: Path, body: bytes, name: str = "x.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(body)
    return path


def _header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def test_the_ggml_type_table_matches_gguf_py():
    import gguf

    ours = {name: (block, size) for name, block, size in GGML_TYPES.values()}
    for qtype, sizes in gguf.GGML_QUANT_SIZES.items():
        if qtype.name in ours:
            assert ours[qtype.name] == sizes, qtype.name
    assert set(ours) <= {q.name for q in gguf.GGML_QUANT_SIZES}


def test_a_kit_file_reads_back_with_its_metadata_and_tensors(kit_gguf):
    path = kit_gguf("Q8_0")
    header = read_header(path)
    assert header.version == 3 and header.architecture == "llama" and header.alignment == 32
    assert header.get("llama.block_count") == 2 and header.get("llama.embedding_length") == 64
    by_name = {t.name: t for t in header.tensors}
    q = by_name["blk.0.attn_q.weight"]
    assert (q.shape, q.type_name, q.nbytes) == ((64, 64), "Q8_0", 64 * 64 // 32 * 34)
    assert by_name["blk.0.attn_norm.weight"].type_name == "F32"
    assert all(t.offset % 32 == 0 and t.offset + t.nbytes <= header.file_size for t in header.tensors)


def test_every_corpus_file_reads(corpus):
    for path in sorted(corpus.glob("*.gguf")):
        header = read_header(path)
        assert header.architecture and len(header.get("tokenizer.ggml.tokens")) > 1000, path.name


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"PK\x03\x04" + b"\0" * 40, "not the magic"),
        (_header(0, 0, version=1), "unsupported GGUF version 1"),
        (_header(0, 0, version=4), "unsupported GGUF version 4"),
        (b"GGUF\x03\x00", "truncated"),
        (_header(0, 1 << 60), "metadata count 1152921504606846976 cannot fit"),
        (_header(1 << 40, 0), "tensor count 1099511627776 cannot fit"),
        (_header(0, 1) + struct.pack("<Q", 1 << 62) + b"k" * 16, "string length 4611686018427387904 exceeds"),
        (_header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 1 << 61) + b"\0" * 16, "array length"),
        (
            _header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99) + b"\0" * 16,
            "unknown metadata value type 99",
        ),
        (_header(0, 2) + _kv_string("a", "x") + _kv_string("a", "y"), "duplicate metadata key"),
        (
            _header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 9, 1) * 6,
            "nested deeper",
        ),
    ],
)
def test_malformed_headers_are_typed_errors_naming_the_file(tmp_path, body, message):
    path = _file(tmp_path, body)
    with pytest.raises(WeightsCorruptError) as caught:
        read_header(path)
    assert message in str(caught.value) and str(path) in str(caught.value)


def _tensor_record(name: str, dims: list[int], ggml_type: int, offset: int) -> bytes:
    n = name.encode()
    return (
        struct.pack("<Q", len(n))
        + n
        + struct.pack("<I", len(dims))
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


def _with_tensor(dims: list[int], ggml_type: int, offset: int, data: int, alignment: int | None = None) -> bytes:
    kv = b""
    if alignment is not None:
        k = b"general.alignment"
        kv = struct.pack("<Q", len(k)) + k + struct.pack("<II", 4, alignment)
    head = _header(1, 1 if kv else 0) + kv + _tensor_record("w", dims, ggml_type, offset)
    pad = -len(head) % (alignment or 32)
    return head + b"\0" * pad + b"\0" * data


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_with_tensor([8, 8], 0, 0, 255), "extends past the end of the file"),
        (_with_tensor([8, 8], 0, 32, 256), "extends past the end of the file"),
        (_with_tensor([8, 8], 0, 4, 300), "not a multiple of the alignment"),
        (_with_tensor([48, 2], 8, 0, 400), "not whole Q8_0 blocks"),
        (_with_tensor([8, 8], 77, 0, 256), "unknown ggml type 77"),
        (_with_tensor([1 << 40, 1 << 40], 0, 0, 256), "has a dimension of 1099511627776"),
        (_with_tensor([64, 64], 0, 0, 256), "cannot fit in the 256-byte data section"),
        (_with_tensor([8, 0], 0, 0, 256), "dimension of 0"),
        (_with_tensor([8, 8], 0, 0, 256, alignment=24), "power of two"),
        (_header(1, 0) + _tensor_record("w", [1, 1, 1, 1, 1], 0, 0), "5 dimensions"),
        (_header(2, 0) + _tensor_record("w", [8], 0, 0) + _tensor_record("w", [8], 0, 32), "duplicate tensor name"),
    ],
)
def test_tensor_records_are_bounded_by_the_file(tmp_path, body, message):
    with pytest.raises(WeightsCorruptError, match=message):
        read_header(_file(tmp_path, body))


def test_a_well_formed_hand_written_tensor_record_is_accepted(tmp_path):
    header = read_header(_file(tmp_path, _with_tensor([8, 8], 0, 0, 256)))
    assert [(t.name, t.shape, t.nbytes) for t in header.tensors] == [("w", (8, 8), 256)]


def test_every_truncation_of_a_real_file_is_a_typed_error(tmp_path, kit_gguf):
    data = kit_gguf("Q4_0").read_bytes()
    header_end = read_header(kit_gguf("Q4_0")).data_offset
    path = tmp_path / "cut.gguf"
    for size in [*range(0, header_end, 7), header_end, len(data) - 1]:
        path.write_bytes(data[:size])
        with pytest.raises(WeightsCorruptError):
            read_header(path)


def test_magic_detection_reads_the_bytes_not_the_name(tmp_path, kit_gguf):
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(kit_gguf("F32").read_bytes())
    fake = _file(tmp_path, b"not gguf at all", "fake.gguf")
    assert has_gguf_magic(renamed) and not has_gguf_magic(fake) and not has_gguf_magic(tmp_path / "absent")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_parse_or_raise_a_typed_error(tmp_path, kit_gguf, data):
    """Random byte edits of a real file (header and metadata region): a header or WeightsCorruptError, nothing else."""
    original = bytearray(kit_gguf("Q8_0", tokenizer=False).read_bytes())
    limit = read_header(kit_gguf("Q8_0", tokenizer=False)).data_offset
    edits = data.draw(
        st.lists(st.tuples(st.integers(0, limit - 1), st.integers(0, 255)), min_size=1, max_size=8), label="edits"
    )
    for position, value in edits:
        original[position] = value
    cut = data.draw(st.integers(limit // 2, len(original)), label="size")
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(bytes(original[:cut]))
    try:
        header = read_header(path)
    except WeightsCorruptError:
        return
    for tensor in header.tensors:
        assert tensor.offset + tensor.nbytes <= header.file_size
