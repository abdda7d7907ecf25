"""The OpenAI routes: chat completions, completions, embeddings and models; each only converts and dispatches."""

from __future__ import annotations

import base64
import functools

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from minerva.api.errors import Dialect
from minerva.api.responding import GenerationReply, output_policy, respond, session_key_of
from minerva.api.state import server_state
from minerva.dialects.openai.chat import ChatChunkEncoder, fold_chat_completion
from minerva.dialects.openai.completions import CompletionChunkEncoder, fold_completion
from minerva.dialects.openai.convert import chat_request_from, completion_request_from, embedding_request_from
from minerva.dialects.openai import files, fine_tuning
from minerva.dialects.openai.errors import openai_error
from minerva.dialects.openai.models import model_list, model_object
from minerva.dialects.openai.protocol import (
    STREAMING_RESPONSE,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    error_responses,
)
from minerva.dialects.openai.shapes import ResponseHeader
from minerva.dialects.openai.streaming import openai_sse
from minerva.engine.base import Engine
from minerva.generation.chat import chat_events, prepare_chat
from minerva.generation.completion import completion_events, prepare_completion
from minerva.generation.embeddings import create_embeddings, prepare_embedding, require_embedding_model

router = APIRouter()
router.include_router(files.router)
router.include_router(fine_tuning.router)

GENERATION_RESPONSES = {**STREAMING_RESPONSE, **error_responses(400, 401, 404, 413, 429, 500, 503)}


def _include_usage(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


@router.post("/v1/chat/completions", responses=GENERATION_RESPONSES)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    """Chat completion in the OpenAI shape; `stream: true` answers with SSE chunks."""
    session = session_key_of(request)

    def open_reply(engine: Engine, model_id: str) -> GenerationReply:
        prepared = prepare_chat(chat_request_from(body, session), engine, model_id, output_policy(request))
        header = ResponseHeader.new("chatcmpl", model_id, "chat.completion.chunk")
        encoder = ChatChunkEncoder(header, prepared.n, _include_usage(body))
        return GenerationReply(chat_events(prepared, engine), functools.partial(openai_sse, encoder),
                               functools.partial(fold_chat_completion, header, prepared.n))

    return await respond(request, body.model, body.stream, open_reply)


@router.post("/v1/completions", responses=GENERATION_RESPONSES)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    """Text completion in the OpenAI shape; `stream: true` answers with SSE chunks."""
    session = session_key_of(request)

    def open_reply(engine: Engine, model_id: str) -> GenerationReply:
        prepared = prepare_completion(completion_request_from(body, session), engine, model_id,
                                      output_policy(request))
        header = ResponseHeader.new("cmpl", model_id, "text_completion")
        n = len(prepared.generations)
        encoder = CompletionChunkEncoder(header, n, _include_usage(body))
        return GenerationReply(completion_events(prepared, engine), functools.partial(openai_sse, encoder),
                               functools.partial(fold_completion, header, n))

    return await respond(request, body.model, body.stream, open_reply)


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    """A float list, or base64 of little-endian float32 (what the OpenAI SDK decodes)."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


@router.post("/v1/embeddings", responses=error_responses(400, 401, 404, 413, 429, 500, 503))
async def create_embedding(body: EmbeddingRequest, request: Request) -> JSONResponse:
    """Embeddings in the OpenAI list shape (float lists or base64 float32)."""
    state = server_state(request)
    model = state.registry.get(body.model)
    require_embedding_model(model.info, model.id)
    async with state.pool.use(model) as engine:
        prepared = prepare_embedding(embedding_request_from(body), engine, body.model)
        result = await create_embeddings(prepared, engine)
    return JSONResponse({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, body.encoding_format)}
                 for i, v in enumerate(result.vectors)],
        "model": model.id,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    })


@router.get("/v1/models", responses=error_responses(401))
async def list_models(request: Request) -> Response:
    """Every registered model with its metadata."""
    state = server_state(request)
    models = state.registry.list()
    key = (state.registry.version, frozenset(state.pool.loaded()))
    cached = state.models_body
    if cached is None or cached[0] != key:
        cached = (key, JSONResponse(model_list(models, set(key[1]))).body)
        state.models_body = cached
    return Response(cached[1], media_type="application/json")


@router.get("/v1/models/{model_id:path}", responses=error_responses(401, 404))
async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
    """One model, or a 404 in the OpenAI envelope."""
    state = server_state(request)
    model = state.registry.get(model_id)
    return JSONResponse(model_object(model, state.pool.is_loaded(model.serving_id)))


DIALECT = Dialect("openai", router, openai_error)
