"""Registered models as OpenAI model objects with minerva's metadata."""

from __future__ import annotations

from minerva.registry import RegisteredModel, capabilities_of


def model_object(model: RegisteredModel, loaded: bool) -> dict:
    """The OpenAI model object plus minerva's metadata, well under 1 KB of JSON."""
    info = model.info
    return {
        "id": model.id,
        "object": "model",
        "created": int(info.mtime),
        "owned_by": "local",
        "name": info.name,
        "format": info.format,
        "quantization": info.quantization,
        "file_size_mb": info.file_size_mb,
        "tensor_count": info.tensor_count,
        "parameter_count": info.parameter_count,
        "architecture": info.architecture,
        "context_length": info.context_length,
        "kind": info.kind,
        "has_chat_template": info.has_chat_template,
        "capabilities": capabilities_of(model),
        "loaded": loaded,
    }


def model_list(models: list[RegisteredModel], loaded_ids: set[str]) -> dict:
    """The OpenAI list object of model objects."""
    return {"object": "list", "data": [model_object(m, m.id in loaded_ids) for m in models]}
