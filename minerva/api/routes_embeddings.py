"""Route: POST /v1/embeddings, through the engine pool like generation."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from minerva.protocol.requests import EmbeddingRequest, error_responses
from minerva.services.embeddings import create_embeddings, prepare_embedding, require_embedding_model

router = APIRouter()


@router.post("/v1/embeddings", responses=error_responses(400, 401, 404, 413, 429, 500, 503))
async def create_embedding(body: EmbeddingRequest, request: Request) -> JSONResponse:
    """Embeddings in the OpenAI list shape (float lists or base64 float32)."""
    state = request.app.state.minerva
    model = state.registry.get(body.model)
    require_embedding_model(model.info, model.id)
    async with state.pool.use(model) as engine:
        prepared = prepare_embedding(body, engine)
        return JSONResponse(await create_embeddings(prepared, engine, model.id))

