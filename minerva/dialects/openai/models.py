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
        **fine_tuned_fields(model),
        **upstream_fields(model),
    }


def upstream_fields(model: RegisteredModel) -> dict:
    """Where an upstream model runs and what its server reports of it (nothing for a local model)."""
    if model.upstream is None:
        return {}
    return {"owned_by": model.upstream.upstream, "upstream": model.upstream.upstream,
            "upstream_kind": model.upstream.kind, "upstream_model": model.upstream.remote_id,
            "upstream_meta": dict(model.upstream.meta)}


def fine_tuned_fields(model: RegisteredModel) -> dict:
    """What a model object says of fine-tuning: fine_tuned, and for a fine-tuned model its base and adapter."""
    if model.base is None or model.adapter is None:
        return {"fine_tuned": False}
    size, mtime_ns = model.adapter_fingerprint or (0, 0)
    return {
        "fine_tuned": True,
        "created": mtime_ns // 10**9,
        "base_model": model.base.id,
        "adapter_format": "gguf" if model.adapter.lower().endswith(".gguf") else "peft",
        "adapter_size_mb": round(size / 2**20, 2),
    }


def model_list(models: list[RegisteredModel], loaded_ids: set[str]) -> dict:
    """The OpenAI list object of model objects."""
    return {"object": "list", "data": [model_object(m, m.serving_id in loaded_ids) for m in models]}
