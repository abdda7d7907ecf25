"""A lazy GGUF header reader: metadata and tensor records over mmap, never the weights.

Large metadata arrays (the vocabulary, the merges) are skipped, not decoded: for string arrays
only the 8-byte length prefixes are walked. Every count and length read from the file is checked
against the bytes left before it sizes anything, and every failure is a ``ModelFormatError``.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from minerva.core.errors import ModelFormatError
from minerva.formats.file_types import GGML_TYPES, ggml_type_name

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
SMALL_ARRAY_MAX_ELEMENTS = 64  # arrays up to this length are decoded into tuples
STRING_CHECKPOINT_INTERVAL = 4096  # string arrays remember every 4096th element's offset
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_NESTING = 8
MAX_KEY_BYTES = 65_536
MAX_TENSOR_NAME_BYTES = 65_536
MAX_STRING_VALUE_BYTES = 64 * 1024 * 1024  # a metadata string (e.g. a chat template)
MAX_ALIGNMENT = 1 << 30
INT64_MAX = (1 << 63) - 1

_PRELUDE = struct.Struct("<4sIQQ")  # magic, version, tensor count, metadata count
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_ARRAY_HEADER = struct.Struct("<IQ")  # element type, length
# Smallest possible records: used to bound counts before walking them.
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, one-byte value
_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset (zero dims, empty name)


class GGUFValueType(IntEnum):
    """Type tag of a GGUF metadata value."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_FORMATS: Mapping[int, str] = MappingProxyType(
    {
        GGUFValueType.UINT8: "B",
        GGUFValueType.INT8: "b",
        GGUFValueType.UINT16: "H",
        GGUFValueType.INT16: "h",
        GGUFValueType.UINT32: "I",
        GGUFValueType.INT32: "i",
        GGUFValueType.FLOAT32: "f",
        GGUFValueType.BOOL: "B",
        GGUFValueType.UINT64: "Q",
        GGUFValueType.INT64: "q",
        GGUFValueType.FLOAT64: "d",
    }
)
_SCALAR_STRUCTS: Mapping[int, struct.Struct] = MappingProxyType(
    {tag: struct.Struct("<" + code) for tag, code in _SCALAR_FORMATS.items()}
)


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array left undecoded: its element type, its length and where it starts."""

    element_type: GGUFValueType
    length: int
    offset: int  # file offset of the first element
    # String arrays: file offsets of elements 0, 4096, 8192, ... so lookups by index skip ahead.
    checkpoints: tuple[int, ...] = field(default=(), repr=False)

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor record: name, shape (GGML order, fastest dim first), type and data location."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to the header's data_offset
    n_bytes: int

    @property
    def type_name(self) -> str:
        """Display name of the tensor's GGML type, e.g. ``Q4_K``."""
        return ggml_type_name(self.ggml_type)

    @property
    def n_elements(self) -> int:
        """Number of elements (the product of the shape)."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class GGUFHeader:
    """Everything in a GGUF file before its tensor data."""

    path: Path
    version: int
    metadata: Mapping[str, Any]  # scalars, str, small tuples, or GGUFArray
    tensors: tuple[GGUFTensorInfo, ...]
    alignment: int
    data_offset: int
    file_size: int

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value by key, or ``default``."""
        return self.metadata.get(key, default)


def _fail(path: Path, reason: str) -> ModelFormatError:
    return ModelFormatError(path, reason)


def _skip_strings(buf: Any, offset: int, count: int) -> int:
    """Offset just past ``count`` consecutive GGUF strings; the hot path over vocabularies.

    Reads only the 8-byte length prefixes. ``struct.error`` (a read past the end) propagates to
    the caller, which maps it to a truncation error; the caller also checks the final offset.
    """
    unpack = _U64.unpack_from
    blocks, rest = divmod(count, 8)
    for _ in range(blocks):
        offset += 8 + unpack(buf, offset)[0]
        offset += 8 + unpack(buf, offset)[0]
        offset += 8 + unpack(buf, offset)[0]
        offset += 8 + unpack(buf, offset)[0]
        offset += 8 + unpack(buf, offset)[0]
        offset += 8 + unpack(buf, offset)[0]
        offset += 8 + unpack(buf, offset)[0]
        offset += 8 + unpack(buf, offset)[0]
    for _ in range(rest):
        offset += 8 + unpack(buf, offset)[0]
    return offset


class _HeaderParser:
    """Walks one mapped GGUF header; private, one instance per read."""

    def __init__(self, path: Path, buf: Any, size: int):
        self.path = path
        self.buf = buf
        self.size = size
        self.offset = 0

    def fail(self, reason: str) -> ModelFormatError:
        return _fail(self.path, reason)

    def need(self, n_bytes: int, what: str) -> None:
        if n_bytes > self.size - self.offset:
            raise self.fail(
                f"truncated: {what} needs {n_bytes} bytes at offset {self.offset}, "
                f"only {self.size - self.offset} left"
            )

    def u32(self, what: str) -> int:
        self.need(4, what)
        (value,) = _U32.unpack_from(self.buf, self.offset)
        self.offset += 4
        return value

    def u64(self, what: str) -> int:
        self.need(8, what)
        (value,) = _U64.unpack_from(self.buf, self.offset)
        self.offset += 8
        return value

    def string(self, what: str, limit: int) -> str:
        length = self.u64(f"{what} length")
        if length > limit:
            raise self.fail(f"{what} is {length} bytes long (limit {limit})")
        self.need(length, what)
        start = self.offset
        self.offset += length
        return bytes(self.buf[start : self.offset]).decode("utf-8", errors="replace")

    def value(self, value_type: int, what: str, depth: int = 0) -> Any:
        scalar = _SCALAR_STRUCTS.get(value_type)
        if scalar is not None:
            self.need(scalar.size, what)
            (value,) = scalar.unpack_from(self.buf, self.offset)
            self.offset += scalar.size
            return bool(value) if value_type == GGUFValueType.BOOL else value
        if value_type == GGUFValueType.STRING:
            return self.string(what, MAX_STRING_VALUE_BYTES)
        if value_type == GGUFValueType.ARRAY:
            return self.array(what, depth)
        raise self.fail(f"{what} has unknown value type {value_type}")

    def array(self, what: str, depth: int) -> tuple[Any, ...] | GGUFArray:
        if depth >= MAX_ARRAY_NESTING:
            raise self.fail(f"{what} nests arrays deeper than {MAX_ARRAY_NESTING}")
        self.need(_ARRAY_HEADER.size, f"{what} array header")
        element_type, length = _ARRAY_HEADER.unpack_from(self.buf, self.offset)
        self.offset += _ARRAY_HEADER.size
        start = self.offset
        left = self.size - start
        scalar = _SCALAR_STRUCTS.get(element_type)
        if scalar is not None:
            if length > left // scalar.size:
                raise self.fail(f"{what} claims {length} elements, more than the file holds")
            if length <= SMALL_ARRAY_MAX_ELEMENTS:
                code = _SCALAR_FORMATS[element_type]
                values = struct.unpack_from(f"<{length}{code}", self.buf, start)
                if element_type == GGUFValueType.BOOL:
                    values = tuple(bool(v) for v in values)
                self.offset = start + length * scalar.size
                return values
            self.offset = start + length * scalar.size
            return GGUFArray(GGUFValueType(element_type), length, start)
        if element_type == GGUFValueType.STRING:
            if length > left // 8:
                raise self.fail(f"{what} claims {length} strings, more than the file holds")
            if length <= SMALL_ARRAY_MAX_ELEMENTS:
                return tuple(self.string(f"{what}[{i}]", MAX_STRING_VALUE_BYTES) for i in range(length))
            checkpoints = []
            end = start
            try:
                for first in range(0, length, STRING_CHECKPOINT_INTERVAL):
                    checkpoints.append(end)
                    end = _skip_strings(self.buf, end, min(STRING_CHECKPOINT_INTERVAL, length - first))
            except (struct.error, OverflowError):
                end = self.size + 1
            if end > self.size:
                raise self.fail(f"truncated: string array {what} runs past the end of the file")
            self.offset = end
            return GGUFArray(GGUFValueType.STRING, length, start, tuple(checkpoints))
        if element_type == GGUFValueType.ARRAY:
            if length > left // _ARRAY_HEADER.size:
                raise self.fail(f"{what} claims {length} nested arrays, more than the file holds")
            for index in range(length):
                self.array(f"{what}[{index}]", depth + 1)
            return GGUFArray(GGUFValueType.ARRAY, length, start)
        raise self.fail(f"{what} is an array of unknown value type {element_type}")

    def tensor_info(self, index: int) -> tuple[str, tuple[int, ...], int, int]:
        name = self.string(f"tensor {index} name", MAX_TENSOR_NAME_BYTES)
        n_dims = self.u32(f"tensor {name!r} dimension count")
        if n_dims > MAX_DIMS:
            raise self.fail(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
        self.need(8 * n_dims, f"tensor {name!r} shape")
        shape = struct.unpack_from(f"<{n_dims}Q", self.buf, self.offset)
        self.offset += 8 * n_dims
        for dim in shape:
            if dim > INT64_MAX:
                raise self.fail(f"tensor {name!r} has a negative dimension ({dim - (1 << 64)})")
        ggml_type = self.u32(f"tensor {name!r} type")
        offset = self.u64(f"tensor {name!r} offset")
        return name, shape, ggml_type, offset


def _check_version(path: Path, version: int) -> None:
    if version in SUPPORTED_VERSIONS:
        return
    swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
    if swapped in (1, 2, 3):
        raise _fail(path, f"big-endian GGUF (version {swapped}) is not supported; only little-endian")
    raise _fail(path, f"unsupported GGUF version {version} (supported: 2, 3)")


def _tensor_nbytes(path: Path, name: str, shape: tuple[int, ...], ggml_type: int) -> int:
    traits = GGML_TYPES.get(ggml_type)
    if traits is None:
        raise _fail(path, f"tensor {name!r} has unknown GGML type {ggml_type}")
    type_name, block_elements, block_bytes = traits
    n_elements = 1
    for dim in shape:
        n_elements *= dim
        if n_elements > INT64_MAX:
            raise _fail(path, f"tensor {name!r} shape {shape} overflows 64 bits")
    if shape and shape[0] % block_elements:
        raise _fail(
            path, f"tensor {name!r} row of {shape[0]} elements is not a multiple of the "
            f"{type_name} block size {block_elements}"
        )
    return n_elements // block_elements * block_bytes


def _alignment(path: Path, metadata: Mapping[str, Any]) -> int:
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or alignment <= 0
        or alignment > MAX_ALIGNMENT
        or alignment & (alignment - 1)
    ):
        raise _fail(path, f"general.alignment {alignment!r} is not a power of two")
    return alignment


def _parse(path: Path, buf: Any, size: int) -> GGUFHeader:
    parser = _HeaderParser(path, buf, size)
    parser.need(_PRELUDE.size, "GGUF header")
    magic, version, n_tensors, n_kv = _PRELUDE.unpack_from(buf, 0)
    if magic != GGUF_MAGIC:
        raise _fail(path, f"not a GGUF file (magic {magic!r})")
    _check_version(path, version)
    parser.offset = _PRELUDE.size
    left = size - parser.offset
    if n_kv > left // _MIN_KV_BYTES:
        raise _fail(path, f"header claims {n_kv} metadata entries, more than the file can hold")
    if n_tensors > left // _MIN_TENSOR_BYTES:
        raise _fail(path, f"header claims {n_tensors} tensors, more than the file can hold")

    metadata: dict[str, Any] = {}
    for index in range(n_kv):
        key = parser.string(f"metadata key {index}", MAX_KEY_BYTES)
        if key in metadata:
            raise _fail(path, f"duplicate metadata key {key!r}")
        value_type = parser.u32(f"type of {key!r}")
        metadata[key] = parser.value(value_type, repr(key))

    if n_tensors > (size - parser.offset) // _MIN_TENSOR_BYTES:
        raise _fail(path, f"header claims {n_tensors} tensors, more than the file can hold")
    records = [parser.tensor_info(index) for index in range(n_tensors)]

    alignment = _alignment(path, metadata)
    data_offset = -(-parser.offset // alignment) * alignment
    if records and data_offset > size:
        raise _fail(path, f"tensor data would start at {data_offset}, past the end ({size} bytes)")

    tensors = []
    names: set[str] = set()
    for name, shape, ggml_type, offset in records:
        if name in names:
            raise _fail(path, f"duplicate tensor name {name!r}")
        names.add(name)
        n_bytes = _tensor_nbytes(path, name, shape, ggml_type)
        if offset % alignment:
            raise _fail(path, f"tensor {name!r} offset {offset} is not aligned to {alignment}")
        if data_offset + offset + n_bytes > size:
            raise _fail(
                path, f"tensor {name!r} data ({n_bytes} bytes at {data_offset + offset}) runs "
                f"past the end of the file ({size} bytes)"
            )
        tensors.append(GGUFTensorInfo(name, tuple(shape), ggml_type, offset, n_bytes))

    return GGUFHeader(
        path=path,
        version=version,
        metadata=MappingProxyType(metadata),
        tensors=tuple(tensors),
        alignment=alignment,
        data_offset=data_offset,
        file_size=size,
    )


class _MappedFile:
    """Context manager giving a read-only mmap of a file (or b"" for an empty file)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> tuple[Any, int]:
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise _fail(self.path, f"cannot open: {exc.strerror or exc}") from None
        try:
            size = os.fstat(self._file.fileno()).st_size
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except (OSError, ValueError) as exc:
            self._file.close()
            raise _fail(self.path, f"cannot map: {exc}") from None
        return (self._map if self._map is not None else b""), size

    def __exit__(self, *exc_info: object) -> None:
        if self._map is not None:
            self._map.close()
        self._file.close()


def parse_gguf_header(buffer: Any, path: Path | str = "<buffer>") -> GGUFHeader:
    """Parse a GGUF header from a buffer holding the whole file (bytes, memoryview or mmap).

    ``path`` only names the source in errors and in the result.
    """
    path = Path(path)
    try:
        return _parse(path, buffer, len(buffer))
    except ModelFormatError:
        raise
    except (struct.error, IndexError, ValueError, OverflowError, TypeError) as exc:
        raise _fail(path, f"malformed GGUF header: {exc}") from None
    except MemoryError:
        raise _fail(path, "GGUF header needs more memory than is available") from None


def read_gguf_header(path: Path | str) -> GGUFHeader:
    """Read a GGUF file's metadata and tensor records without touching its tensor data."""
    path = Path(path)
    with _MappedFile(path) as (buf, _size):
        return parse_gguf_header(buf, path)


def read_gguf_strings(path: Path | str, array: GGUFArray, indices: Iterable[int]) -> dict[int, str]:
    """Selected elements of an undecoded string array (e.g. token texts by id); others skipped.

    Indices outside the array are left out of the result.
    """
    path = Path(path)
    wanted = sorted({i for i in indices if 0 <= i < array.length})
    if array.element_type != GGUFValueType.STRING or not wanted:
        return {}
    found: dict[int, str] = {}
    with _MappedFile(path) as (buf, size):
        parser = _HeaderParser(path, buf, size)
        parser.offset = array.offset
        position = 0
        try:
            for index in wanted:
                checkpoint = index // STRING_CHECKPOINT_INTERVAL
                if checkpoint < len(array.checkpoints) and checkpoint * STRING_CHECKPOINT_INTERVAL > position:
                    position = checkpoint * STRING_CHECKPOINT_INTERVAL
                    parser.offset = array.checkpoints[checkpoint]
                parser.offset = _skip_strings(buf, parser.offset, index - position)
                if parser.offset > size:
                    raise _fail(path, "truncated: string array runs past the end of the file")
                found[index] = parser.string(f"string {index}", MAX_STRING_VALUE_BYTES)
                position = index + 1
        except (struct.error, OverflowError):
            raise _fail(path, "truncated: string array runs past the end of the file") from None
    return found
