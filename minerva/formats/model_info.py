"""ModelInfo: everything minerva knows about a model from its headers, without weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ModelFormat = Literal["gguf", "safetensors", "remote"]  # remote: served by an upstream server
ModelKind = Literal["chat", "completion", "embedding"]


@dataclass(frozen=True)
class ModelInfo:
    """Header-derived metadata of one model (a file, a split GGUF set or a HF directory)."""

    format: ModelFormat
    path: Path  # the file or directory that identifies the model
    files: tuple[Path, ...]  # every weight file (shards / splits), in order
    file_size_bytes: int
    tensor_count: int
    parameter_count: int
    quantization: str | None
    architecture: str | None
    context_length: int | None
    kind: ModelKind
    name: str
    chat_template: str | None = None
    embedding_length: int | None = None
    block_count: int | None = None
    vocab_size: int | None = None
    pooling: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    tokenizer_model: str | None = None
    mtime: float = 0.0
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def file_size_mb(self) -> float:
        """File size in megabytes (10^6 bytes), two decimals."""
        return round(self.file_size_bytes / 1_000_000, 2)

    @property
    def has_chat_template(self) -> bool:
        """Whether the model ships its own chat template."""
        return bool(self.chat_template)
