"""Routes: GET /v1/models and GET /v1/models/{id} (ids may contain '/')."""

from __future__ import annotations

from fastapi import APIRouter, Request

from minerva.services.models import model_list, model_object

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    """Every registered model with its metadata."""
    state = request.app.state.minerva
    return model_list(state.registry.list(), set(state.pool.loaded()))


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict:
    """One model, or a 404 in the OpenAI envelope."""
    state = request.app.state.minerva
    model = state.registry.get(model_id)
    return model_object(model, state.pool.is_loaded(model.id))
