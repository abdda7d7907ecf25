"""Detect a model's format and read its ModelInfo; find the model roots inside a directory.

A model root is a ``.gguf`` file (for a split set, its first part ``name-00001-of-0000N.gguf``),
a ``.safetensors`` file, or a Hugging Face directory (``config.json`` plus SafeTensors weights).

``discover_models`` lists ``mmproj-*.gguf`` projector files too: they are valid GGUFs and the
registry may want them next to their model. Their ModelInfo carries ``("gguf_type", "mmproj")``
(from ``general.type``) or architecture ``clip`` in ``extra``, so callers can tell them apart.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from minerva.core.errors import ModelFormatError
from minerva.formats.file_types import dominant_type, llama_file_type_name
from minerva.formats.gguf import GGUFArray, GGUFHeader, read_gguf_header, read_gguf_strings
from minerva.formats.model_info import ModelInfo, ModelKind
from minerva.formats.safetensors import (
    CONFIG_FILE,
    SAFETENSORS_INDEX_FILE,
    SAFETENSORS_SUFFIX,
    HFDirectory,
    dominant_dtype,
    read_hf_directory,
    read_safetensors_header,
)

logger = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
SPLIT_PATTERN = re.compile(r"^(?P<base>.+)-(?P<number>\d{5})-of-(?P<count>\d{5})\.gguf$")
# Architectures that only embed (llama.cpp's encoder-only families).
GGUF_EMBEDDING_ARCHITECTURES = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "neo-bert", "modern-bert", "t5encoder"}
)
GGUF_POOLING_TYPES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
HF_LM_HEAD_MARKERS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForMaskedLM")
_HF_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")
_HF_EMBEDDING_KEYS = ("hidden_size", "n_embd", "d_model")
_HF_BLOCK_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def _split_parts(path: Path) -> tuple[Path, ...]:
    """Every part of the split set that ``path`` belongs to (just ``path`` when not split)."""
    match = SPLIT_PATTERN.match(path.name)
    if match is None:
        return (path,)
    count = int(match["count"])
    if count < 1 or int(match["number"]) < 1 or int(match["number"]) > count:
        raise ModelFormatError(path, f"split number {match['number']} of {match['count']} is impossible")
    parts = tuple(path.with_name(f"{match['base']}-{n:05d}-of-{count:05d}{GGUF_SUFFIX}") for n in range(1, count + 1))
    for part in parts:
        if not part.is_file():
            raise ModelFormatError(parts[0], f"split part {part.name} is missing")
    return parts


def is_split_continuation(path: Path) -> bool:
    """Whether ``path`` is the second or later part of a split GGUF (not a model root)."""
    match = SPLIT_PATTERN.match(path.name)
    return match is not None and int(match["number"]) != 1


def _is_hf_directory(path: Path) -> bool:
    if not (path / CONFIG_FILE).is_file():
        return False
    if (path / SAFETENSORS_INDEX_FILE).is_file():
        return True
    return any(child.suffix == SAFETENSORS_SUFFIX for child in path.iterdir())


def is_model_root(path: Path) -> bool:
    """Whether ``path`` names a model by itself: a .gguf (first split), a .safetensors, a HF dir."""
    try:
        if path.is_file():
            if path.suffix == GGUF_SUFFIX:
                return not is_split_continuation(path)
            return path.suffix == SAFETENSORS_SUFFIX
        return path.is_dir() and _is_hf_directory(path)
    except OSError:
        return False


def _children(directory: Path) -> list[Path]:
    try:
        return sorted(child for child in directory.iterdir() if not child.name.startswith("."))
    except OSError as exc:
        raise ModelFormatError(directory, f"cannot list: {exc.strerror or exc}") from None


def _file_roots(directory: Path) -> Iterable[Path]:
    for child in _children(directory):
        if child.is_file() and is_model_root(child):
            yield child


def discover_models(directory: Path) -> list[Path]:
    """Model roots in ``directory``: its own files, HF subdirectories, and files one level down.

    A directory that is itself a HF model directory is one model. Non-first GGUF split parts are
    left out (their first part stands for the set); hidden entries are skipped.
    """
    directory = Path(directory)
    try:
        if _is_hf_directory(directory):
            return [directory]
    except OSError as exc:
        raise ModelFormatError(directory, f"cannot list: {exc.strerror or exc}") from None
    roots: list[Path] = []
    for child in _children(directory):
        try:
            if child.is_dir():
                if _is_hf_directory(child):
                    roots.append(child)
                else:
                    roots.extend(_file_roots(child))
            elif is_model_root(child):
                roots.append(child)
        except OSError as exc:
            logger.warning("skipping %s: %s", child, exc)
    return roots


# --------------------------------------------------------------------------- GGUF


def _gguf_int(header: GGUFHeader, key: str) -> int | None:
    value = header.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _gguf_str(header: GGUFHeader, key: str) -> str | None:
    value = header.get(key)
    return value if isinstance(value, str) else None


def _gguf_quantization(header: GGUFHeader, headers: tuple[GGUFHeader, ...]) -> str | None:
    file_type = _gguf_int(header, "general.file_type")
    if file_type is not None:
        name = llama_file_type_name(file_type)
        if name is not None:
            return name
    return dominant_type((t.type_name, t.n_bytes) for h in headers for t in h.tensors)


def _gguf_special_tokens(header: GGUFHeader) -> tuple[str | None, str | None]:
    tokens = header.get("tokenizer.ggml.tokens")
    bos_id = _gguf_int(header, "tokenizer.ggml.bos_token_id")
    eos_id = _gguf_int(header, "tokenizer.ggml.eos_token_id")
    ids = [i for i in (bos_id, eos_id) if i is not None]
    if isinstance(tokens, tuple):
        texts = {i: tokens[i] for i in ids if 0 <= i < len(tokens) and isinstance(tokens[i], str)}
    elif isinstance(tokens, GGUFArray) and ids:
        texts = read_gguf_strings(header.path, tokens, ids)
    else:
        texts = {}
    return (texts.get(bos_id) if bos_id is not None else None, texts.get(eos_id) if eos_id is not None else None)


def _gguf_kind(architecture: str | None, pooling_type: Any, chat_template: str | None) -> ModelKind:
    if pooling_type is not None or architecture in GGUF_EMBEDDING_ARCHITECTURES:
        return "embedding"
    return "chat" if chat_template else "completion"


def _read_gguf_info(path: Path) -> ModelInfo:
    parts = _split_parts(path)
    first = parts[0]
    headers = tuple(read_gguf_header(part) for part in parts)
    header = headers[0]
    split_count = _gguf_int(header, "split.count")
    if split_count is not None and len(parts) > 1 and split_count != len(parts):
        raise ModelFormatError(first, f"split.count is {split_count} but the file names say {len(parts)}")
    architecture = _gguf_str(header, "general.architecture")
    prefix = f"{architecture}." if architecture else "\0"
    chat_template = _gguf_str(header, "tokenizer.chat_template")
    pooling_type = _gguf_int(header, prefix + "pooling_type")
    tokens = header.get("tokenizer.ggml.tokens")
    bos, eos = _gguf_special_tokens(header)
    name = _gguf_str(header, "general.name")
    if not name:
        match = SPLIT_PATTERN.match(first.name)
        name = match["base"] if match else first.stem
    extra = [("gguf_version", str(header.version))]
    if _gguf_str(header, "general.type"):
        extra.append(("gguf_type", header.get("general.type")))
    if len(parts) > 1:
        extra.append(("split_count", str(len(parts))))
    return ModelInfo(
        format="gguf",
        path=first,
        files=parts,
        file_size_bytes=sum(h.file_size for h in headers),
        tensor_count=sum(len(h.tensors) for h in headers),
        parameter_count=sum(t.n_elements for h in headers for t in h.tensors),
        quantization=_gguf_quantization(header, headers),
        architecture=architecture,
        context_length=_gguf_int(header, prefix + "context_length"),
        kind=_gguf_kind(architecture, pooling_type, chat_template),
        name=name,
        chat_template=chat_template,
        embedding_length=_gguf_int(header, prefix + "embedding_length"),
        block_count=_gguf_int(header, prefix + "block_count"),
        vocab_size=len(tokens) if isinstance(tokens, (tuple, GGUFArray)) else _gguf_int(header, prefix + "vocab_size"),
        pooling=GGUF_POOLING_TYPES.get(pooling_type, str(pooling_type)) if pooling_type is not None else None,
        bos_token=bos,
        eos_token=eos,
        tokenizer_model=_gguf_str(header, "tokenizer.ggml.model"),
        mtime=_max_mtime(parts),
        extra=tuple(extra),
    )


# --------------------------------------------------------------------------- SafeTensors


def _config_value(config: Any, keys: Iterable[str]) -> int | None:
    """The first positive int among ``keys`` in a HF config or its ``text_config``."""
    for source in (config, config.get("text_config")):
        if not isinstance(source, Mapping):
            continue
        for key in keys:
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _hf_quantization(hf: HFDirectory) -> str | None:
    quantization_config = hf.config.get("quantization_config")
    if isinstance(quantization_config, dict):
        method = quantization_config.get("quant_method")
        if isinstance(method, str) and method:
            return method.upper()
    return dominant_dtype(hf.headers)


def _hf_architecture_class(config: Any) -> str | None:
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        return architectures[0]
    return None


def _hf_kind(hf: HFDirectory, architecture_class: str | None) -> ModelKind:
    if hf.is_sentence_transformers:
        return "embedding"
    if (
        architecture_class
        and architecture_class.endswith("Model")
        and not any(marker in architecture_class for marker in HF_LM_HEAD_MARKERS)
    ):
        return "embedding"
    return "chat" if hf.chat_template else "completion"


def _read_hf_info(directory: Path) -> ModelInfo:
    hf = read_hf_directory(directory)
    config = hf.config
    architecture_class = _hf_architecture_class(config)
    model_type = config.get("model_type")
    architecture = model_type if isinstance(model_type, str) and model_type else architecture_class
    context_length = hf.max_seq_length or _config_value(config, _HF_CONTEXT_KEYS)
    vocab_size = _config_value(config, ("vocab_size",))
    extra = []
    if architecture_class:
        extra.append(("hf_architecture", architecture_class))
    if hf.normalize_embeddings:
        extra.append(("normalize_embeddings", "true"))
    tokenizer_class = hf.tokenizer_config.get("tokenizer_class")
    return ModelInfo(
        format="safetensors",
        path=directory,
        files=hf.weight_files,
        file_size_bytes=sum(h.file_size for h in hf.headers),
        tensor_count=sum(len(h.tensors) for h in hf.headers),
        parameter_count=sum(h.parameter_count for h in hf.headers),
        quantization=_hf_quantization(hf),
        architecture=architecture,
        context_length=context_length,
        kind=_hf_kind(hf, architecture_class),
        name=directory.name,
        chat_template=hf.chat_template,
        embedding_length=_config_value(config, _HF_EMBEDDING_KEYS),
        block_count=_config_value(config, _HF_BLOCK_KEYS),
        vocab_size=vocab_size,
        pooling=hf.pooling,
        bos_token=hf.bos_token,
        eos_token=hf.eos_token,
        tokenizer_model=tokenizer_class if isinstance(tokenizer_class, str) else None,
        mtime=_max_mtime(hf.weight_files + hf.read_files),
        extra=tuple(extra),
    )


def _read_safetensors_file_info(path: Path) -> ModelInfo:
    header = read_safetensors_header(path)
    return ModelInfo(
        format="safetensors",
        path=path,
        files=(path,),
        file_size_bytes=header.file_size,
        tensor_count=len(header.tensors),
        parameter_count=header.parameter_count,
        quantization=dominant_dtype((header,)),
        architecture=None,
        context_length=None,
        kind="completion",
        name=path.stem,
        mtime=_max_mtime((path,)),
    )


def _max_mtime(paths: Iterable[Path]) -> float:
    latest = 0.0
    for path in paths:
        try:
            latest = max(latest, path.stat().st_mtime)
        except OSError as exc:
            raise ModelFormatError(path, f"cannot stat: {exc.strerror or exc}") from None
    return latest


def read_model_info(path: Path) -> ModelInfo:
    """ModelInfo for a model root (GGUF file or split set, SafeTensors file, HF directory)."""
    path = Path(path)
    try:
        if path.is_dir():
            if not (path / CONFIG_FILE).is_file():
                raise ModelFormatError(path, "directory has no config.json: not a Hugging Face model")
            return _read_hf_info(path)
        if not path.is_file():
            raise ModelFormatError(path, "no such file or directory")
        if path.suffix == GGUF_SUFFIX:
            return _read_gguf_info(path)
        if path.suffix == SAFETENSORS_SUFFIX:
            return _read_safetensors_file_info(path)
        with open(path, "rb") as file:
            magic = file.read(4)
    except OSError as exc:
        raise ModelFormatError(path, f"cannot read: {exc.strerror or exc}") from None
    if magic == b"GGUF":
        return _read_gguf_info(path)
    raise ModelFormatError(path, "not a .gguf or .safetensors file")
