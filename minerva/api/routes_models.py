"""Routes: GET /v1/models and GET /v1/models/{id} (ids may contain '/')."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from minerva.protocol.requests import error_responses
from minerva.services.models import model_list, model_object

router = APIRouter()


@router.get("/v1/models", responses=error_responses(401))
async def list_models(request: Request) -> JSONResponse:
    """Every registered model with its metadata."""
    state = request.app.state.minerva
    models = state.registry.list()
    key = (state.registry.version, frozenset(state.pool.loaded()))
    cached = state.response_cache.get("models")
    if cached is None or cached[0] != key:
        cached = (key, JSONResponse(model_list(models, set(key[1]))).body)
        state.response_cache["models"] = cached
    return Response(cached[1], media_type="application/json")


@router.get("/v1/models/{model_id:path}", responses=error_responses(401, 404))
async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
    """One model, or a 404 in the OpenAI envelope."""
    state = request.app.state.minerva
    model = state.registry.get(model_id)
    return JSONResponse(model_object(model, state.pool.is_loaded(model.id)))
