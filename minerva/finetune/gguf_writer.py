"""A minimal GGUF v3 writer: string/number metadata and F32/F16 tensors, written atomically."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from minerva.finetune.atomic import atomic_file

ALIGNMENT = 32
_VERSION = 3
_TYPE_UINT32, _TYPE_FLOAT32, _TYPE_BOOL, _TYPE_STRING = 4, 6, 7, 8
_GGML_TYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}

MetadataValue = str | int | float | bool


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _value(value: MetadataValue) -> bytes:
    if isinstance(value, bool):
        return struct.pack("<I?", _TYPE_BOOL, value)
    if isinstance(value, int):
        return struct.pack("<II", _TYPE_UINT32, value)
    if isinstance(value, float):
        return struct.pack("<If", _TYPE_FLOAT32, value)
    return struct.pack("<I", _TYPE_STRING) + _string(value)


def _padding(offset: int) -> bytes:
    return b"\0" * (-offset % ALIGNMENT)


def _write(file: BinaryIO, metadata: Mapping[str, MetadataValue], tensors: Mapping[str, np.ndarray]) -> None:
    file.write(b"GGUF" + struct.pack("<IQQ", _VERSION, len(tensors), len(metadata)))
    for key, value in metadata.items():
        file.write(_string(key) + _value(value))
    offset = 0
    for name, array in tensors.items():
        dims = array.shape[::-1]  # GGML order: the fastest-varying dimension first
        file.write(_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims))
        file.write(struct.pack("<IQ", _GGML_TYPES[array.dtype], offset))
        offset += array.nbytes + len(_padding(array.nbytes))
    file.write(_padding(file.tell()))
    for array in tensors.values():
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        file.write(data + _padding(len(data)))


def write_gguf(out: Path, metadata: Mapping[str, MetadataValue], tensors: Mapping[str, np.ndarray]) -> Path:
    """Write a GGUF file (tensors in F32 or F16) through a temporary file renamed into place."""
    unsupported = [name for name, array in tensors.items() if array.dtype not in _GGML_TYPES]
    if unsupported:
        raise ValueError(f"tensors must be float32 or float16: {', '.join(unsupported)}")
    out = Path(out)
    with atomic_file(out) as file:
        _write(file, metadata, tensors)
    return out
