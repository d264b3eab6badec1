"""A validating GGUF header reader: struct over a memory map, every length checked against the file.

A GGUF file is a header (magic ``GGUF``, a version, a tensor count and a
metadata count), the metadata (typed key/value pairs), one record per tensor
(name, shape, ggml type, offset) and, after padding to ``general.alignment``,
the tensor data. This module reads all of it except the tensor data, and
trusts nothing it reads: every count, string length and array length is
checked against the bytes left in the file before anything is allocated for
it, tensor extents must lie inside the data section and be aligned, keys and
tensor names must be unique. Any violation raises
:class:`~modelport.errors.WeightsCorruptError` naming the file, the field and
the value, so that a truncated, foreign or hostile file gives a typed error,
never a crash, a hang or an allocation larger than the file.

Numeric metadata arrays are kept as :class:`array.array` (as many bytes as in
the file); strings are decoded as UTF-8 with replacement characters.

It imports nothing heavy (no numpy, torch or gguf).
"""

from __future__ import annotations

import array
import mmap
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.errors import WeightsCorruptError

#: The file's first four bytes.
MAGIC = b"GGUF"
#: Versions read (version 1 used 32-bit counts and is obsolete).
VERSIONS = (2, 3)
#: Alignment of the data section and of every tensor when ``general.alignment`` is absent.
DEFAULT_ALIGNMENT = 32
#: ggml's limit on a tensor's dimensions.
MAX_DIMS = 4
#: How deep arrays of arrays may nest.
MAX_ARRAY_DEPTH = 4

#: ggml type id -> (name, elements per block, bytes per block), as in ggml.h / gguf-py's GGML_QUANT_SIZES.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}

# Metadata value types: id -> (struct format, size, array typecode).
_SCALARS: dict[int, tuple[str, int, str]] = {
    0: ("<B", 1, "B"),
    1: ("<b", 1, "b"),
    2: ("<H", 2, "H"),
    3: ("<h", 2, "h"),
    4: ("<I", 4, "I"),
    5: ("<i", 4, "i"),
    6: ("<f", 4, "f"),
    7: ("<?", 1, "B"),
    10: ("<Q", 8, "Q"),
    11: ("<q", 8, "q"),
    12: ("<d", 8, "d"),
}
_STRING = 8
_ARRAY = 9
#: Metadata value type names, for messages.
VALUE_TYPES = {
    0: "uint8",
    1: "int8",
    2: "uint16",
    3: "int16",
    4: "uint32",
    5: "int32",
    6: "float32",
    7: "bool",
    8: "string",
    9: "array",
    10: "uint64",
    11: "int64",
    12: "float64",
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor record of a GGUF file.

    Attributes:
        name: the GGUF name (``blk.0.attn_q.weight``).
        shape: the shape in torch order (outermost first; GGUF stores it innermost first).
        ggml_type: the ggml type id (a key of :data:`GGML_TYPES`).
        offset: absolute offset of the data in the file.
        nbytes: size of the data in bytes.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int

    @property
    def type_name(self) -> str:
        """The ggml type's name (``Q4_K``)."""
        return GGML_TYPES[self.ggml_type][0]

    @property
    def n_elements(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFHeader:
    """Everything in a GGUF file but its tensor data, validated.

    Attributes:
        path: the file.
        version: the GGUF version (2 or 3).
        metadata: key -> value (``int``, ``float``, ``bool``, ``str``, ``list`` of str/arrays, or ``array.array``).
        value_types: key -> the metadata value type id (for arrays, ``(9, item type)``).
        tensors: the tensor records, in file order.
        alignment: the data alignment.
        data_offset: where the data section starts.
        file_size: the file's size in bytes.
    """

    path: Path
    version: int
    metadata: Mapping[str, Any]
    value_types: Mapping[str, Any]
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_offset: int
    file_size: int

    @property
    def architecture(self) -> str | None:
        """``general.architecture``, if stated as a string."""
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value, or ``default``."""
        return self.metadata.get(key, default)


def has_gguf_magic(path: Path) -> bool:
    """Whether the file starts with the GGUF magic (reads four bytes; never raises for an unreadable file)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == MAGIC
    except OSError:
        return False


class _Reader:
    """Bounds-checked little-endian reads from a buffer."""

    def __init__(self, buf: Any, size: int, path: Path) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.path = path

    def fail(self, detail: str, field: str | None = None, value: object = None) -> WeightsCorruptError:
        where = f" (field {field!r}" + (f" = {value!r}" if value is not None else "") + ")" if field else ""
        return WeightsCorruptError(str(self.path), f"not a valid GGUF file: {detail}{where}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(
                f"truncated: {what} needs {n} bytes at offset {self.pos}, the file has {self.size - self.pos} left"
            )

    def scalar(self, fmt: str, size: int, what: str) -> Any:
        self.need(size, what)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        value: int = self.scalar("<I", 4, what)
        return value

    def u64(self, what: str) -> int:
        value: int = self.scalar("<Q", 8, what)
        return value

    def string(self, what: str) -> str:
        length = self.u64(f"{what} length")
        if length > self.size - self.pos:
            raise self.fail(
                f"{what}: string length {length} exceeds the {self.size - self.pos} bytes left", what, length
            )
        raw = bytes(self.buf[self.pos : self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def count(self, what: str, min_item: int, field: str | None = None) -> int:
        n = self.u64(what)
        left = self.size - self.pos
        if min_item > 0 and n > left // min_item:
            raise self.fail(f"{what} {n} cannot fit in the {left} bytes left", field or what, n)
        return n

    def value(self, vtype: int, key: str, depth: int = 0) -> tuple[Any, Any]:
        if vtype in _SCALARS:
            fmt, size, _ = _SCALARS[vtype]
            v = self.scalar(fmt, size, f"value of {key!r}")
            return (bool(v) if vtype == 7 else v), vtype
        if vtype == _STRING:
            return self.string(f"value of {key!r}"), vtype
        if vtype == _ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise self.fail(f"arrays nested deeper than {MAX_ARRAY_DEPTH}", key)
            item_type = self.u32(f"array item type of {key!r}")
            if item_type in _SCALARS:
                fmt, size, code = _SCALARS[item_type]
                n = self.count(f"array length of {key!r}", size, key)
                data = array.array(code)
                data.frombytes(bytes(self.buf[self.pos : self.pos + n * size]))
                if sys.byteorder != "little":
                    data.byteswap()
                self.pos += n * size
                return data, (vtype, item_type)
            if item_type == _STRING:
                n = self.count(f"array length of {key!r}", 8, key)
                return [self.string(f"item of {key!r}") for _ in range(n)], (vtype, item_type)
            if item_type == _ARRAY:
                n = self.count(f"array length of {key!r}", 12, key)
                items = [self.value(_ARRAY, key, depth + 1)[0] for _ in range(n)]
                return items, (vtype, item_type)
            raise self.fail(f"unknown array item type {item_type}", key, item_type)
        raise self.fail(f"unknown metadata value type {vtype}", key, vtype)


def read_header(path: Path | str) -> GGUFHeader:
    """Read and validate the header, metadata and tensor records of a GGUF file.

    Raises:
        WeightsCorruptError: not a GGUF file, an unsupported version, or any
            count, length, offset, size, type or alignment that the file cannot
            hold (the message names the file, field and value).
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            if size == 0:
                raise WeightsCorruptError(str(path), "not a GGUF file: the file is empty")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    return _parse(_Reader(view, size, path), path)
                finally:
                    view.release()
    except OSError as exc:
        raise WeightsCorruptError(str(path), f"cannot read it ({exc})") from exc


def _parse(r: _Reader, path: Path) -> GGUFHeader:
    if r.size < 4 or bytes(r.buf[:4]) != MAGIC:
        raise WeightsCorruptError(
            str(path), f"not a GGUF file: it starts with {bytes(r.buf[:4])!r}, not the magic {MAGIC!r}"
        )
    r.pos = 4
    version = r.u32("version")
    if version not in VERSIONS:
        raise r.fail(f"unsupported GGUF version {version} (supported: 2, 3)", "version", version)
    # A tensor record takes at least 8 (name length) + 4 (dims) + 4 (type) + 8 (offset) bytes, a key/value 8 + 4 + 1.
    n_tensors = r.count("tensor count", 24, "tensor_count")
    n_kv = r.count("metadata count", 13, "metadata_kv_count")
    metadata: dict[str, Any] = {}
    value_types: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string("metadata key")
        if key in metadata:
            raise r.fail("duplicate metadata key", key)
        vtype = r.u32(f"value type of {key!r}")
        value, vt = r.value(vtype, key)
        metadata[key] = value
        value_types[key] = vt
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or alignment <= 0
        or alignment & (alignment - 1)
        or alignment > 1 << 20
    ):
        raise r.fail("alignment must be a power of two", "general.alignment", alignment)
    records: list[tuple[str, tuple[int, ...], int, int]] = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = r.string(f"name of tensor {i}")
        if name in names:
            raise r.fail("duplicate tensor name", "tensor name", name)
        names.add(name)
        n_dims = r.u32(f"dimension count of {name!r}")
        if n_dims < 1 or n_dims > MAX_DIMS:
            raise r.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)", "n_dims", n_dims)
        dims = [r.u64(f"dimension of {name!r}") for _ in range(n_dims)]
        ggml_type = r.u32(f"type of {name!r}")
        offset = r.u64(f"offset of {name!r}")
        if ggml_type not in GGML_TYPES:
            raise r.fail(f"tensor {name!r} has an unknown ggml type {ggml_type}", "ggml_type", ggml_type)
        records.append((name, tuple(dims), ggml_type, offset))
    data_offset = -(-r.pos // alignment) * alignment
    if n_tensors and data_offset > r.size:
        raise r.fail(f"the data section would start at {data_offset}, past the end of the file ({r.size} bytes)")
    data_size = r.size - data_offset
    tensors = []
    for name, dims, ggml_type, offset in records:
        type_name, block, type_size = GGML_TYPES[ggml_type]
        n = 1
        for d in dims:
            if d == 0 or d > data_size * block:  # no dimension may exceed what the file could hold
                raise r.fail(f"tensor {name!r} has a dimension of {d}", "shape", list(dims))
            n *= d
            if n > data_size * block:
                raise r.fail(
                    f"tensor {name!r} of shape {list(dims)} cannot fit in the {data_size}-byte data section",
                    "shape",
                    list(dims),
                )
        if dims[0] % block:
            raise r.fail(
                f"tensor {name!r}: its rows of {dims[0]} elements are not whole {type_name} blocks of {block}",
                "shape",
                list(dims),
            )
        nbytes = n // block * type_size
        if offset % alignment:
            raise r.fail(f"tensor {name!r}: offset {offset} is not a multiple of the alignment {alignment}", "offset")
        if offset > data_size or nbytes > data_size - offset:
            raise r.fail(
                f"tensor {name!r} ({type_name}, {nbytes} bytes at data offset {offset}) extends past the end "
                f"of the file (data section: {data_size} bytes)",
                "offset",
                offset,
            )
        tensors.append(TensorInfo(name, tuple(reversed(dims)), ggml_type, data_offset + offset, nbytes))
    return GGUFHeader(path, version, metadata, value_types, tuple(tensors), alignment, data_offset, r.size)


_CACHE: dict[tuple[str, int, int], GGUFHeader] = {}
_CACHE_SIZE = 8


def cached_header(path: Path | str) -> GGUFHeader:
    """:func:`read_header`, remembered for the file's path, size and modification time (the last few files)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise WeightsCorruptError(str(path), f"cannot read it ({exc})") from exc
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    header = _CACHE.get(key)
    if header is None:
        header = read_header(path)
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = header
    return header
