"""Registered and loaded models in Ollama's shapes: /api/tags, /api/show and /api/ps bodies."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from minerva.dialects.ollama.convert import supports_thinking
from minerva.dialects.ollama.names import ollama_name
from minerva.formats.gguf import GGUFArray, GGUFHeader, read_gguf_header, read_gguf_strings
from minerva.formats.safetensors import read_json_file
from minerva.generation.fim import fim_format
from minerva.registry import RegisteredModel, capabilities_of

LONG_ARRAY = 5
"""Metadata arrays longer than this are shown empty, as Ollama's /api/show does (token lists, merges…)."""
VOCAB_HEAD, VOCAB_TAIL = 1024, 4096
"""Where a GGUF vocabulary keeps its special tokens (first ids, or added at the end): the ids read for FIM
markers, so /api/show never decodes a whole 150k-token vocabulary."""
OLLAMA_BLOB = re.compile(r"sha256-([0-9a-f]{64})")
"""How Ollama names a blob file: by its content's sha256."""
FOREVER = timedelta(microseconds=(2**63 - 1) // 1000)
"""How far away expires_at is for a model that never unloads for idleness (Ollama's largest duration)."""


def human_number(count: int) -> str:
    """A parameter count as Ollama writes parameter_size: 135M, 134.52M, 7.6B, 500K."""
    for size, unit, decimals in ((10**9, "B", 1), (10**6, "M", 2)):
        if count >= size:
            number = count / size
            return f"{number:.0f}{unit}" if number == math.floor(number) else f"{number:.{decimals}f}{unit}"
    return f"{count / 1000:.0f}K" if count >= 1000 else str(count)


def rfc3339(moment: datetime) -> str:
    """A UTC time as Ollama writes it."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def modified_at(model: RegisteredModel) -> str:
    """When the model's files last changed."""
    return rfc3339(datetime.fromtimestamp(model.info.mtime, timezone.utc))


def digest(model: RegisteredModel) -> str:
    """The sha256 an Ollama blob is named by; for any other model one that changes whenever its files do (of their
    path, size and mtime: hashing gigabytes of weights on every listing is not affordable)."""
    blob = OLLAMA_BLOB.fullmatch(model.info.path.name)
    if blob is not None and model.adapter is None:
        return blob[1]
    size, mtime_ns = model.fingerprint
    key = f"{model.id}\0{model.info.path}\0{size}\0{mtime_ns}\0{model.adapter or ''}"
    return hashlib.sha256(key.encode()).hexdigest()


def details(model: RegisteredModel) -> dict[str, Any]:
    """Ollama's `details`: format, family, parameter size and quantization."""
    info = model.info
    family = info.architecture or ""
    return {"parent_model": model.base.id if model.base is not None else "", "format": info.format,
            "family": family, "families": [family] if family else None,
            "parameter_size": human_number(info.parameter_count), "quantization_level": info.quantization or ""}


def tag_entry(model: RegisteredModel) -> dict[str, Any]:
    """One entry of /api/tags."""
    name = ollama_name(model.id)
    return {"name": name, "model": name, "modified_at": modified_at(model), "size": model.info.file_size_bytes,
            "digest": digest(model), "details": details(model)}


def ps_entry(model: RegisteredModel, memory_bytes: int, expires_in_s: float | None, context_length: int,
             now: datetime) -> dict[str, Any]:
    """One entry of /api/ps: a loaded model, its memory (all of it on the CPU) and when it unloads."""
    name = ollama_name(model.id)
    forever = expires_in_s is None or expires_in_s >= FOREVER.total_seconds()
    expires = now + (FOREVER if forever else timedelta(seconds=expires_in_s))
    return {"name": name, "model": name, "size": memory_bytes, "digest": digest(model), "details": details(model),
            "expires_at": rfc3339(expires), "size_vram": 0, "context_length": context_length}


def _json_value(value: Any) -> Any:
    """A metadata value as JSON: long or undecoded arrays empty, non-finite floats null."""
    if isinstance(value, GGUFArray):
        return []
    if isinstance(value, tuple):
        return [_json_value(item) for item in value] if len(value) <= LONG_ARRAY else []
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _gguf_vocabulary(header: GGUFHeader) -> Callable[[str], bool]:
    """Membership in the GGUF's special-token region of the vocabulary."""
    tokens = header.get("tokenizer.ggml.tokens")
    if isinstance(tokens, tuple):
        texts = set(tokens)
    elif isinstance(tokens, GGUFArray):
        count = len(tokens)
        ids = [*range(min(count, VOCAB_HEAD)), *range(max(VOCAB_HEAD, count - VOCAB_TAIL), count)]
        texts = set(read_gguf_strings(header.path, tokens, ids).values())
    else:
        texts = set()
    return texts.__contains__


def _hf_vocabulary(model: RegisteredModel) -> Callable[[str], bool]:
    """Membership in a Hugging Face directory's added tokens (where FIM markers live)."""
    config = read_json_file(model.info.path / "tokenizer_config.json") or {}
    added = config.get("added_tokens_decoder")
    texts = {entry.get("content") for entry in added.values() if isinstance(entry, Mapping)} \
        if isinstance(added, Mapping) else set()
    return texts.__contains__


def capabilities(model: RegisteredModel, has_token: Callable[[str], bool]) -> list[str]:
    """Ollama's capabilities: embedding, or completion with tools, insert (FIM tokens) and thinking."""
    if model.info.kind == "embedding":
        return ["embedding"]
    found = ["completion"]
    if "tools" in capabilities_of(model):
        found.append("tools")
    if fim_format(has_token) is not None:
        found.append("insert")
    if supports_thinking(model):
        found.append("thinking")
    return found


def model_info(model: RegisteredModel, header: GGUFHeader | None) -> dict[str, Any]:
    """Ollama's `model_info`: a GGUF's metadata (less its name and chat template, as Ollama shows it), else the
    same keys from a SafeTensors model's config; with general.parameter_count and general.basename always."""
    info = model.info
    arch = info.architecture or "unknown"
    found: dict[str, Any] = {}
    if header is not None:
        found = {key: _json_value(value) for key, value in header.metadata.items()
                 if key not in ("general.name", "tokenizer.chat_template")}
    found.setdefault("general.architecture", arch)
    found.setdefault("general.basename", info.name)
    found.setdefault("general.parameter_count", info.parameter_count)
    for key, value in (("context_length", info.context_length), ("embedding_length", info.embedding_length),
                       ("block_count", info.block_count)):
        if value is not None:
            found.setdefault(f"{arch}.{key}", value)
    return found


def _parameters(context_length: int) -> str:
    """The Modelfile PARAMETER lines Ollama shows (only the context a request gets here)."""
    return f"{'num_ctx':<30} {context_length}"


def show_body(model: RegisteredModel, context_length: int, verbose: bool) -> dict[str, Any]:
    """/api/show: template, details, model_info and capabilities of one model (headers only, no weights)."""
    info = model.info
    header = read_gguf_header(info.path) if info.format == "gguf" else None
    has_token = _gguf_vocabulary(header) if header is not None else _hf_vocabulary(model) \
        if info.path.is_dir() else (lambda _: False)
    license_text = header.get("general.license") if header is not None else None
    name = ollama_name(model.id)
    body: dict[str, Any] = {
        "license": license_text if isinstance(license_text, str) else "",
        "modelfile": f"# Modelfile generated by minerva\nFROM {name}\nPARAMETER num_ctx {context_length}\n",
        "parameters": _parameters(context_length),
        "template": info.chat_template or "",
        "details": details(model),
        "model_info": model_info(model, header),
        "capabilities": capabilities(model, has_token),
        "modified_at": modified_at(model),
    }
    if verbose and header is not None:
        body["tensors"] = [{"name": t.name, "type": t.type_name, "shape": list(t.shape)} for t in header.tensors]
    return body
