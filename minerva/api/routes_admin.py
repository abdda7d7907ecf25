"""Routes the web page needs and no client API has: models in full detail, loading and unloading them."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from minerva.api.state import ServerState, server_state
from minerva.core.errors import HttpStatusError
from minerva.dialects.openai.models import model_object
from minerva.discovery.describe import provenance
from minerva.registry import RegisteredModel

router = APIRouter(prefix="/minerva", include_in_schema=False)


class ModelAction(BaseModel):
    """The body of a load or unload request."""

    model_config = ConfigDict(extra="forbid")
    model: str


def _plain(value: object) -> object:
    """A header value as JSON has it: paths as strings, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value


def inspected(model: RegisteredModel) -> dict:
    """Everything `minerva inspect ID --json` shows of a registered model, in the same shape."""
    info = model.info
    data = {"id": model.id, "source": model.source,
            **{f.name: _plain(getattr(info, f.name)) for f in fields(info)},
            "file_size_mb": info.file_size_mb, "has_chat_template": info.has_chat_template}
    if model.discovered is not None:
        data.update(provenance(model.discovered, info.has_chat_template))
    return data


def model_details(model: RegisteredModel, state: ServerState) -> dict:
    """A model's /v1/models object plus where it was found, its full header facts and its loaded state."""
    serving = model.serving_id
    loaded = state.pool.is_loaded(serving)
    return {
        **model_object(model, loaded),
        "source": model.source,
        "path": str(model.info.path),
        "found_at": str(model.discovered.origin if model.discovered is not None else model.info.path),
        "serving_model": serving,
        "adapter": model.adapter,
        "memory_bytes": state.pool.memory_bytes().get(serving) if loaded else None,
        "expires_in_s": state.pool.expires_in(serving) if loaded else None,
        "inspect": inspected(model),
    }


def failure_list(failures: dict[Path, str]) -> list[dict]:
    """Files that were found but could not be read, with the reason, sorted by path."""
    return [{"path": str(path), "reason": reason} for path, reason in sorted(failures.items())]


@router.get("/models")
async def list_models(request: Request) -> dict:
    """Every registered model in full detail, and the files that could not be read."""
    state = server_state(request)
    return {"object": "list", "data": [model_details(m, state) for m in state.registry.list()],
            "failures": failure_list(state.registry.failures())}


@router.post("/models/load")
async def load_model(body: ModelAction, request: Request) -> dict:
    """Load a model now (its base, for a fine-tuned one); the model's details afterwards."""
    state = server_state(request)
    model = state.registry.get(body.model)
    await state.pool.load(model)
    return model_details(model, state)


@router.post("/models/unload")
async def unload_model(body: ModelAction, request: Request) -> dict:
    """Unload a model now (409 while a request is using it); the model's details afterwards."""
    state = server_state(request)
    model = state.registry.get(body.model)
    if not await state.pool.unload(model.serving_id) and state.pool.is_loaded(model.serving_id):
        raise HttpStatusError(f"The model '{model.serving_id}' is serving a request; it can be unloaded once "
                              "its requests finish.", 409)
    return model_details(model, state)

