"""The Ollama routes under /api/: version, tags, show, ps, chat, generate, embed, embeddings; the model-store
routes Ollama has (pull, push, create, copy, blobs, delete of a model file) answer 501."""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.background import BackgroundTask

from minerva.api.errors import Dialect
from minerva.api.responding import GenerationReply, output_policy, request_record, respond
from minerva.api.state import ServerState, server_state
from minerva.api.streaming import ndjson_response
from minerva.core import requests as core
from minerva.core.errors import HttpStatusError, InvalidRequestError, ModelNotFoundError
from minerva.dialects.ollama.chunks import ChunkEncoder, Shape, created_at, fold_body
from minerva.dialects.ollama.convert import chat_request_from, embedding_request_from, generate_request_from
from minerva.dialects.ollama.errors import ollama_error
from minerva.dialects.ollama.keep_alive import FOREVER, keep_alive_seconds
from minerva.dialects.ollama.models import ps_entry, show_body, tag_entry
from minerva.dialects.ollama.names import resolve_model
from minerva.dialects.ollama.protocol import (
    ChatRequest,
    CopyRequest,
    DeleteRequest,
    GENERATION_RESPONSES,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    ShowRequest,
    error_responses,
)
from minerva.dialects.ollama.streaming import ollama_ndjson
from minerva.dialects.ollama.timing import Timings, now_ns, timed
from minerva.engine.base import Engine
from minerva.engine.pool import default_context_length
from minerva.generation.chat import chat_events, prepare_chat
from minerva.generation.completion import completion_events, prepare_completion
from minerva.generation.embeddings import (
    create_embeddings,
    prepare_embedding,
    require_embedding_model,
    truncate_and_normalize,
)
from minerva.registry import RegisteredModel, unregister_fine_tuned

router = APIRouter()

OLLAMA_VERSION = "0.12.0"
"""The Ollama API version minerva answers /api/version with: numeric, and past the 0.6.4 that Copilot's Ollama
provider requires (it reads the model list and /api/show only from servers that new)."""

STORE_ROUTE = ("minerva serves the model files it finds in its models directories and config; it does not {what}. "
               "Put GGUF or SafeTensors files in a models directory (or name them in the config) instead.")


def _default_keep_alive(state: ServerState) -> float:
    """The keep-alive of a request that sets none: the server's idle TTL (0 there: never unload)."""
    return state.settings.idle_ttl_s if state.settings.idle_ttl_s > 0 else FOREVER


def _keep_alive(state: ServerState, value: float | str | None) -> float:
    """The request's keep-alive in seconds (FOREVER when negative), its default when it sets none."""
    seconds = keep_alive_seconds(value)
    return _default_keep_alive(state) if seconds is None else seconds


def _unload_after(response: Response, state: ServerState, model: RegisteredModel, seconds: float) -> Response:
    """keep_alive 0: unload the model once the response is sent (still busy with others: once they end)."""
    if seconds == 0:
        response.background = BackgroundTask(state.pool.unload, model.serving_id)
    return response


def _context_length(state: ServerState, model: RegisteredModel) -> int:
    """The context one request gets: the loaded engine's, else what loading it would give."""
    engine = state.pool.loaded().get(model.serving_id)
    if engine is not None:
        return engine.n_ctx
    base = model.base or model
    return state.settings.n_ctx or default_context_length(base, state.settings) or model.info.context_length or 0


def _arrival_ns(request: Request) -> int:
    """When the request arrived (its body not yet read), on the clock the durations are measured with."""
    record = request_record(request)
    return int(record.started * 1e9) if record is not None else now_ns()  # started is perf_counter() seconds


def _refuse_embedding_model(model: RegisteredModel, name: str, what: str) -> None:
    if model.info.kind == "embedding":
        raise InvalidRequestError(f'"{name}" does not support {what}', param="model")


@router.head("/api/version", include_in_schema=False)
@router.get("/api/version", responses=error_responses(401))
async def version() -> JSONResponse:
    """The Ollama API version this server speaks."""
    return JSONResponse({"version": OLLAMA_VERSION})


@router.head("/api/tags", include_in_schema=False)
@router.get("/api/tags", responses=error_responses(401))
async def tags(request: Request) -> JSONResponse:
    """Every registered model, under its Ollama name (an untagged id as `id:latest`)."""
    return JSONResponse({"models": [tag_entry(model) for model in server_state(request).registry.list()]})


@router.post("/api/show", responses=error_responses(400, 401, 404, 413))
async def show(body: ShowRequest, request: Request) -> JSONResponse:
    """One model's template, details, metadata and capabilities (from its headers; nothing is loaded)."""
    state = server_state(request)
    model = resolve_model(state.registry, body.model_name)
    body_of = functools.partial(show_body, model, _context_length(state, model), body.verbose)
    return JSONResponse(await asyncio.to_thread(body_of))  # reads the file's header: off the event loop


@router.get("/api/ps", responses=error_responses(401))
async def ps(request: Request) -> JSONResponse:
    """The loaded models, longest-lived first; a model past its keep-alive is unloaded first, not listed."""
    state = server_state(request)
    await state.pool.unload_idle()
    memory = state.pool.memory_bytes()
    now = datetime.now(timezone.utc)
    registered = {model.id: model for model in state.registry.list()}
    entries = []
    for model_id, engine in state.pool.loaded().items():
        expires_in = state.pool.expires_in(model_id)
        model = registered.get(model_id)
        if model is None or expires_in == 0:  # vanished, or being unloaded as its last request ends
            continue
        entries.append(ps_entry(model, memory.get(model_id, 0), expires_in, engine.n_ctx, now))
    entries.sort(key=lambda entry: entry["expires_at"], reverse=True)
    return JSONResponse({"models": entries})


async def _load_or_unload(state: ServerState, model: RegisteredModel, name: str, seconds: float,
                          shape: Shape) -> JSONResponse:
    """A chat or generate with nothing to answer: load the model (keep_alive 0: unload it), as Ollama does."""
    if seconds == 0:
        if not await state.pool.unload(model.serving_id):
            state.pool.keep_alive(model, 0)  # busy: it unloads as soon as its requests end
        reason = "unload"
    else:
        await state.pool.load(model, seconds)
        reason = "load"
    answer: dict[str, Any] = {"message": {"role": "assistant", "content": ""}} if shape == "chat" else {"response": ""}
    return JSONResponse({"model": name, "created_at": created_at(), **answer, "done": True, "done_reason": reason})


async def _generate(request: Request, model: RegisteredModel, name: str, seconds: float, stream: bool,
                    generation: core.ChatRequest | core.CompletionRequest, shape: Shape, timings: Timings) -> Response:
    """Run a chat or completion request through the one generation path, written as Ollama objects."""
    state = server_state(request)

    def open_reply(engine: Engine, local_id: str) -> GenerationReply:
        timings.loaded = now_ns()
        state.pool.keep_alive(model, seconds)
        if isinstance(generation, core.ChatRequest):
            events = chat_events(prepare_chat(generation, engine, local_id, output_policy(request)), engine)
        else:
            events = completion_events(prepare_completion(generation, engine, local_id, output_policy(request)),
                                       engine)
        encoder = ChunkEncoder(name, timings, shape)
        return GenerationReply(timed(events, timings), functools.partial(ollama_ndjson, encoder),
                               functools.partial(fold_body, encoder), ndjson_response)

    return _unload_after(await respond(request, model.id, stream, open_reply), state, model, seconds)


@router.post("/api/chat", responses=GENERATION_RESPONSES)
async def chat(body: ChatRequest, request: Request) -> Response:
    """A chat turn as Ollama objects: NDJSON lines unless `stream` is false; no messages loads the model."""
    timings = Timings(_arrival_ns(request))
    state = server_state(request)
    model = resolve_model(state.registry, body.model)
    _refuse_embedding_model(model, body.model, "chat")
    seconds = _keep_alive(state, body.keep_alive)
    if not body.messages:
        return await _load_or_unload(state, model, body.model, seconds, "chat")
    generation = chat_request_from(body, model)
    return await _generate(request, model, body.model, seconds, body.stream is not False, generation, "chat",
                           timings)


@router.post("/api/generate", responses=GENERATION_RESPONSES)
async def generate(body: GenerateRequest, request: Request) -> Response:
    """A completion as Ollama objects (through the chat template unless `raw`; `suffix` fills in the middle);
    no prompt loads the model."""
    timings = Timings(_arrival_ns(request))
    state = server_state(request)
    model = resolve_model(state.registry, body.model)
    _refuse_embedding_model(model, body.model, "generate")
    seconds = _keep_alive(state, body.keep_alive)
    if not body.prompt and not body.suffix:
        return await _load_or_unload(state, model, body.model, seconds, "generate")
    generation = generate_request_from(body, model)
    return await _generate(request, model, body.model, seconds, body.stream is not False, generation, "generate",
                           timings)


async def _embed(state: ServerState, model: RegisteredModel, seconds: float,
                 embedding: core.EmbeddingRequest) -> tuple[list[list[float]], int, int]:
    """The vectors, prompt tokens and loaded time of an embedding request on the model (loaded if needed)."""
    require_embedding_model(model.info, model.id)
    async with state.pool.use(model) as engine:
        loaded = now_ns()
        state.pool.keep_alive(model, seconds)
        if not embedding.inputs:
            return [], 0, loaded
        result = await create_embeddings(prepare_embedding(embedding, engine, model.id), engine)
    return result.vectors, result.prompt_tokens, loaded


@router.post("/api/embed", responses=error_responses(400, 401, 404, 413, 500, 503))
async def embed(body: EmbedRequest, request: Request) -> Response:
    """Unit-length embeddings of one text or several (cut to the context unless `truncate` is false)."""
    arrived = _arrival_ns(request)
    state = server_state(request)
    model = resolve_model(state.registry, body.model)
    seconds = _keep_alive(state, body.keep_alive)
    embedding = embedding_request_from(body)
    if embedding.inputs == ("",):
        embedding = core.EmbeddingRequest((), embedding.dimensions, embedding.truncate)  # Ollama: just load
    vectors, tokens, loaded = await _embed(state, model, seconds, embedding)
    response = JSONResponse({
        "model": body.model, "embeddings": [truncate_and_normalize(v, len(v)) for v in vectors],
        "total_duration": now_ns() - arrived, "load_duration": loaded - arrived, "prompt_eval_count": tokens,
    })
    return _unload_after(response, state, model, seconds)


@router.post("/api/embeddings", responses=error_responses(400, 401, 404, 413, 500, 503))
async def embeddings(body: EmbeddingsRequest, request: Request) -> Response:
    """The older endpoint: one prompt's embedding as the model gives it (no prompt: just load the model)."""
    state = server_state(request)
    model = resolve_model(state.registry, body.model)
    seconds = _keep_alive(state, body.keep_alive)
    inputs = (body.prompt,) if body.prompt else ()
    vectors, _, _ = await _embed(state, model, seconds, core.EmbeddingRequest(inputs, truncate=True))
    return _unload_after(JSONResponse({"embedding": vectors[0] if vectors else []}), state, model, seconds)


@router.delete("/api/delete", responses=error_responses(400, 401, 404, 413, 501))
async def delete(body: DeleteRequest, request: Request) -> Response:
    """Delete a fine-tuned (ft:) model and its adapter, as DELETE /v1/models/{id} does; model files: 501."""
    state = server_state(request)
    try:
        model = resolve_model(state.registry, body.model_name)
    except ModelNotFoundError:
        if not state.has_fine_tuning_data():
            raise
        state.fine_tuning()  # opening the job runner publishes the fine-tuned models
        model = resolve_model(state.registry, body.model_name)
    if model.adapter is None:
        raise HttpStatusError(STORE_ROUTE.format(what="delete model files (remove the file yourself); only "
                                                      "fine-tuned ft: models can be deleted"), 501)
    unregister_fine_tuned(state.registry, model.id)
    state.fine_tuning().forget_model(model.id)  # open already: it published this model
    return Response(status_code=200)


@router.post("/api/copy", responses=error_responses(400, 401, 413, 501))
async def copy(body: CopyRequest) -> Response:
    """Not served: minerva has no model store to copy within (name a model under another id in the config)."""
    raise HttpStatusError(STORE_ROUTE.format(what=f"copy models ('{body.source}' to '{body.destination}'; to "
                                                  "serve a file under another id, name it in [models] of the config)"),
                          501)


@router.post("/api/pull", responses=error_responses(401, 413, 501))
async def pull() -> Response:
    """Not served: minerva downloads nothing."""
    raise HttpStatusError(STORE_ROUTE.format(what="download models (pull)"), 501)


@router.post("/api/push", responses=error_responses(401, 413, 501))
async def push() -> Response:
    """Not served: minerva uploads nothing."""
    raise HttpStatusError(STORE_ROUTE.format(what="upload models (push)"), 501)


@router.post("/api/create", responses=error_responses(401, 413, 501))
async def create() -> Response:
    """Not served: minerva builds no models from Modelfiles."""
    raise HttpStatusError(STORE_ROUTE.format(what="create models from a Modelfile"), 501)


@router.head("/api/blobs/{blob_digest}", include_in_schema=False)
@router.post("/api/blobs/{blob_digest}", responses=error_responses(401, 413, 501))
async def blobs(blob_digest: str) -> Response:
    """Not served: minerva keeps no blob store."""
    raise HttpStatusError(STORE_ROUTE.format(what=f"keep a blob store (blob {blob_digest[:80]})"), 501)


DIALECT = Dialect("ollama", router, ollama_error, ("/api/",))
