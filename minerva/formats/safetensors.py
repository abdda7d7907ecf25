"""SafeTensors headers and Hugging Face model directories, read without touching any weights.

A ``.safetensors`` file is an 8-byte little-endian header length, a JSON header, then the data.
A Hugging Face directory adds ``config.json``, optionally ``model.safetensors.index.json`` naming
the shards, tokenizer files and a chat template. Every failure is a ``ModelFormatError``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from minerva.core.errors import ModelFormatError
from minerva.formats.file_types import SAFETENSORS_DTYPE_BITS, dominant_type

logger = logging.getLogger(__name__)

SAFETENSORS_SUFFIX = ".safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE_NAME = "model.safetensors"
CONFIG_FILE = "config.json"
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
MAX_JSON_FILE_BYTES = 64 * 1024 * 1024  # config, tokenizer_config, index, modules.json...
_LENGTH_BYTES = 8


@dataclass(frozen=True)
class SafeTensorsTensorInfo:
    """One tensor record: name, dtype, shape and byte range within the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def n_elements(self) -> int:
        """Number of elements (the product of the shape; 1 for a scalar)."""
        return math.prod(self.shape)

    @property
    def n_bytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return self.end - self.start


@dataclass(frozen=True)
class SafeTensorsHeader:
    """The header of one ``.safetensors`` file."""

    path: Path
    header_size: int
    metadata: Mapping[str, str]  # the optional ``__metadata__`` object
    tensors: tuple[SafeTensorsTensorInfo, ...]
    file_size: int

    @property
    def parameter_count(self) -> int:
        """Total number of elements over all tensors."""
        return sum(tensor.n_elements for tensor in self.tensors)


@dataclass(frozen=True)
class HFDirectory:
    """What minerva reads from a Hugging Face model directory (configs, never weights)."""

    path: Path
    weight_files: tuple[Path, ...]
    headers: tuple[SafeTensorsHeader, ...]
    config: Mapping[str, Any]
    tokenizer_config: Mapping[str, Any]
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    is_sentence_transformers: bool
    pooling: str | None
    normalize_embeddings: bool  # sentence-transformers pipeline ends in a Normalize module
    max_seq_length: int | None
    read_files: tuple[Path, ...]  # every file read, for change detection (mtime)


def _fail(path: Path, reason: str) -> ModelFormatError:
    return ModelFormatError(path, reason)


def _is_plain_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_tensor(path: Path, name: str, entry: Any, data_size: int) -> SafeTensorsTensorInfo:
    if not isinstance(entry, dict):
        raise _fail(path, f"tensor {name!r}: header entry is not an object")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_BITS:
        raise _fail(path, f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_plain_int(d) and d >= 0 for d in shape):
        raise _fail(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative ints")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_plain_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _fail(path, f"tensor {name!r}: bad data_offsets {offsets!r}")
    start, end = offsets
    if end > data_size:
        raise _fail(path, f"tensor {name!r}: data ends at {end}, past the data section ({data_size} bytes)")
    n_elements = 1
    for dim in shape:
        n_elements *= dim
    n_bits = n_elements * SAFETENSORS_DTYPE_BITS[dtype]
    if n_bits % 8 or n_bits // 8 != end - start:
        raise _fail(
            path, f"tensor {name!r}: {end - start} bytes do not match shape {shape} of {dtype}"
        )
    return SafeTensorsTensorInfo(name, dtype, tuple(shape), start, end)


def _parse_header(path: Path, raw: bytes, file_size: int) -> SafeTensorsHeader:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(path, f"header is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _fail(path, "__metadata__ is not an object")
    data_size = file_size - _LENGTH_BYTES - len(raw)
    tensors = tuple(_parse_tensor(path, name, entry, data_size) for name, entry in header.items())
    previous_end = 0
    for tensor in sorted(tensors, key=lambda t: (t.start, t.end)):
        if tensor.start < previous_end and tensor.n_bytes:
            raise _fail(path, f"tensor {tensor.name!r} overlaps another tensor's data")
        previous_end = max(previous_end, tensor.end)
    return SafeTensorsHeader(
        path=path,
        header_size=len(raw),
        metadata=MappingProxyType({str(k): str(v) for k, v in metadata.items()}),
        tensors=tensors,
        file_size=file_size,
    )


def read_safetensors_header(path: Path | str) -> SafeTensorsHeader:
    """Read the JSON header of one ``.safetensors`` file (the 8-byte length and the header only)."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            file_size = os.fstat(file.fileno()).st_size
            prefix = file.read(_LENGTH_BYTES)
            if len(prefix) < _LENGTH_BYTES:
                raise _fail(path, f"truncated: {file_size} bytes, too short for a SafeTensors header")
            header_size = int.from_bytes(prefix, "little")
            if header_size > MAX_HEADER_BYTES:
                raise _fail(path, f"header claims {header_size} bytes (limit {MAX_HEADER_BYTES})")
            if header_size > file_size - _LENGTH_BYTES:
                raise _fail(path, f"header claims {header_size} bytes, larger than the file ({file_size})")
            raw = file.read(header_size)
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) != header_size:
        raise _fail(path, "truncated while reading the header")
    try:
        return _parse_header(path, raw, file_size)
    except MemoryError:
        raise _fail(path, "header needs more memory than is available") from None


def _read_json(path: Path, *, required: bool) -> Any:
    """Any small JSON document, or None when absent and not required."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if required:
            raise _fail(path, "missing") from None
        return None
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from None
    if size > MAX_JSON_FILE_BYTES:
        raise _fail(path, f"{size} bytes is too large for a JSON config (limit {MAX_JSON_FILE_BYTES})")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(path, f"not valid JSON: {str(exc)[:200]}") from None


def read_json_file(path: Path, *, required: bool = False) -> dict[str, Any] | None:
    """A small JSON object file (config, tokenizer config...), or None when absent and optional."""
    data = _read_json(path, required=required)
    if data is not None and not isinstance(data, dict):
        raise _fail(path, "not a JSON object")
    return data


def _read_text_file(path: Path) -> str | None:
    try:
        size = path.stat().st_size
        if size > MAX_JSON_FILE_BYTES:
            raise _fail(path, f"{size} bytes is too large for a template")
        return path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from None


def shard_files(directory: Path) -> tuple[Path, ...]:
    """The weight files of a HF directory, in order: the index's shards, or the single file(s)."""
    index_path = directory / SAFETENSORS_INDEX_FILE
    index = read_json_file(index_path)
    if index is not None:
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise _fail(index_path, "weight_map is missing or empty")
        names = set()
        for file_name in weight_map.values():
            if (
                not isinstance(file_name, str)
                or not file_name.endswith(SAFETENSORS_SUFFIX)
                or Path(file_name).name != file_name
                or file_name.startswith(".")
            ):
                raise _fail(index_path, f"weight_map names an invalid shard {file_name!r}")
            names.add(file_name)
        shards = tuple(directory / name for name in sorted(names))
        for shard in shards:
            if not shard.is_file():
                raise _fail(index_path, f"shard {shard.name} is missing")
        return shards
    single = directory / SINGLE_FILE_NAME
    if single.is_file():
        return (single,)
    loose = tuple(sorted(p for p in directory.glob("*" + SAFETENSORS_SUFFIX) if p.is_file()))
    if not loose:
        raise _fail(directory, "no .safetensors weights in this directory")
    return loose


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def chat_template_from(tokenizer_config: Mapping[str, Any]) -> str | None:
    """The chat template in a tokenizer config: a string, or the "default" of a named list."""
    template = tokenizer_config.get("chat_template")
    if isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {
            item.get("name"): item.get("template")
            for item in template
            if isinstance(item, dict) and isinstance(item.get("template"), str)
        }
        return named.get("default") or next(iter(named.values()), None)
    return None


_POOLING_MODES = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_lasttoken", "last"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
    ("pooling_mode_weightedmean_tokens", "weighted_mean"),
)


def _sentence_transformers_pooling(directory: Path, modules: list[Any], read: list[Path]) -> str | None:
    for module in modules:
        if not isinstance(module, dict) or not str(module.get("type", "")).endswith("Pooling"):
            continue
        module_path = str(module.get("path", ""))
        if Path(module_path).name != module_path or module_path.startswith("."):
            continue
        config_path = directory / module_path / CONFIG_FILE
        config = read_json_file(config_path)
        if config is None:
            continue
        read.append(config_path)
        for key, mode in _POOLING_MODES:
            if config.get(key) is True:
                return mode
        mode = config.get("pooling_mode")
        return mode if isinstance(mode, str) else None
    return None


def read_hf_directory(directory: Path | str) -> HFDirectory:
    """Read a Hugging Face model directory's configs and every weight file's header."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    config = read_json_file(config_path, required=True) or {}
    read: list[Path] = [config_path]
    weight_files = shard_files(directory)
    headers = tuple(read_safetensors_header(path) for path in weight_files)

    tokenizer_config: dict[str, Any] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = read_json_file(directory / name)
        if data is not None:
            read.append(directory / name)
            for key, value in data.items():
                tokenizer_config.setdefault(key, value)

    chat_template = _read_text_file(directory / "chat_template.jinja")
    if chat_template is not None:
        read.append(directory / "chat_template.jinja")
    else:
        chat_template = chat_template_from(tokenizer_config)
        if chat_template is None:
            processor_template = read_json_file(directory / "chat_template.json")
            if processor_template is not None:
                read.append(directory / "chat_template.json")
                chat_template = chat_template_from(processor_template)

    pooling = None
    max_seq_length = None
    st_modules = _read_modules_list(directory / "modules.json")
    if st_modules is not None:
        read.append(directory / "modules.json")
        pooling = _sentence_transformers_pooling(directory, st_modules, read)
        st_config = read_json_file(directory / "sentence_bert_config.json")
        if st_config is not None:
            read.append(directory / "sentence_bert_config.json")
            if _is_plain_int(st_config.get("max_seq_length")):
                max_seq_length = st_config["max_seq_length"]

    return HFDirectory(
        path=directory,
        weight_files=weight_files,
        headers=headers,
        config=MappingProxyType(config),
        tokenizer_config=MappingProxyType(tokenizer_config),
        chat_template=chat_template or None,
        bos_token=_token_text(tokenizer_config.get("bos_token")),
        eos_token=_token_text(tokenizer_config.get("eos_token")),
        is_sentence_transformers=st_modules is not None,
        normalize_embeddings=any(
            isinstance(m, dict) and str(m.get("type", "")).endswith("Normalize") for m in st_modules or ()
        ),
        pooling=pooling,
        max_seq_length=max_seq_length,
        read_files=tuple(dict.fromkeys(read)),
    )


def _read_modules_list(path: Path) -> list[Any] | None:
    """sentence-transformers' ``modules.json`` (a JSON list), or None when absent."""
    data = _read_json(path, required=False)
    if data is not None and not isinstance(data, list):
        raise _fail(path, "not a JSON list")
    return data


def dominant_dtype(headers: tuple[SafeTensorsHeader, ...]) -> str | None:
    """The dtype holding the most bytes over all headers."""
    return dominant_type((t.dtype, t.n_bytes) for h in headers for t in h.tensors)
