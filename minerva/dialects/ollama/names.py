"""Ollama model names (`name:tag`) ↔ minerva's registered ids."""

from __future__ import annotations

from minerva.core.errors import ModelNotFoundError
from minerva.registry import ModelRegistry, RegisteredModel

DEFAULT_TAG = "latest"


def ollama_name(model_id: str) -> str:
    """How a registered id is listed: an id without a tag gets `:latest`, as Ollama names every model."""
    return model_id if ":" in model_id else f"{model_id}:{DEFAULT_TAG}"


def resolve_model(registry: ModelRegistry, name: str) -> RegisteredModel:
    """The registered model an Ollama name reaches: the id itself, or for `id:latest` the untagged id."""
    candidates = [name]
    if name.endswith(f":{DEFAULT_TAG}"):
        candidates.append(name.removesuffix(f":{DEFAULT_TAG}"))
    for candidate in candidates:
        try:
            return registry.get(candidate)
        except ModelNotFoundError:
            continue
    raise ModelNotFoundError(name)
