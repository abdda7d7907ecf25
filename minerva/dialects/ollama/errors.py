"""Ollama's error envelope: `{"error": "..."}` with the HTTP status (Ollama's own wording for a missing model)."""

from __future__ import annotations

from minerva.core.errors import MinervaError, ModelNotFoundError


def error_message(error: MinervaError) -> str:
    """The message, as Ollama words an unknown model ("model 'x' not found")."""
    if isinstance(error, ModelNotFoundError):
        return f"model '{error.model_id}' not found"
    return error.message


def ollama_error(error: MinervaError) -> dict:
    """The Ollama error body of a typed error."""
    return {"error": error_message(error)}
