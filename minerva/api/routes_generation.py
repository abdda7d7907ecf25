"""Routes: POST /v1/chat/completions and /v1/completions, streamed or not, over one service path."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from minerva.api.sse import sse_body, sse_response
from minerva.errors import QueueFullError
from minerva.protocol.chunks import collect_chat_completion, collect_completion
from minerva.protocol.requests import STREAMING_RESPONSE, ChatCompletionRequest, CompletionRequest, error_responses
from minerva.services.chat import chat_chunks, prepare_chat
from minerva.services.completions import completion_chunks, prepare_completion

router = APIRouter()

DISCONNECT_POLL_S = 0.5


def session_key_of(request: Request) -> str | None:
    """The client's session id (OpenCode sends x-session-affinity / x-session-id)."""
    return request.headers.get("x-session-affinity") or request.headers.get("x-session-id")


async def _collect_unless_disconnected(request: Request, chunks: AsyncIterator[dict]) -> list[dict] | None:
    """All chunks of a non-streaming response; None (generation cancelled) if the client left."""
    collected: list[dict] = []

    async def drain() -> None:
        async with contextlib.aclosing(chunks) as items:  # type: ignore[type-var]
            async for chunk in items:
                collected.append(chunk)

    task = asyncio.create_task(drain())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return None
        task.result()
        return collected
    finally:
        if not task.done():
            task.cancel()


def _has_output(chunk: dict) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if choice.get("text") or delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
            return True
    return False


async def _recording_usage(chunks: AsyncIterator[dict], record: dict) -> AsyncIterator[dict]:
    """Pass chunks through, noting first-output time and usage for the request's log line and metrics."""
    async with contextlib.aclosing(chunks) as items:  # type: ignore[type-var]
        async for chunk in items:
            if "first_token" not in record and _has_output(chunk):
                record["first_token"] = time.perf_counter()
            if chunk.get("usage"):
                record["usage"] = chunk["usage"]
                record["last_token"] = time.perf_counter()
            yield chunk


async def _respond(request: Request, stream: bool, include_usage: bool, open_chunks: Callable,
                   collect: Callable[[list[dict]], dict], model_id: str) -> Response:
    state = request.app.state.minerva
    record = request.scope.get("state", {}).get("access", {})
    record["model"] = model_id
    model = state.registry.get(model_id)
    stack = contextlib.AsyncExitStack()
    engine = await stack.enter_async_context(state.pool.use(model))
    try:
        if engine.stats().get("queued", 0) >= state.settings.queue_limit:
            raise QueueFullError(f"too many requests are waiting for model '{model.id}'; retry shortly")
        chunks = _recording_usage(open_chunks(engine, model.id), record)
    except BaseException:
        await stack.aclose()
        raise
    if stream:
        async def body() -> AsyncIterator[bytes]:
            async with stack:
                async for data in sse_body(chunks, include_usage, state.settings.keepalive_interval_s):
                    yield data
        return sse_response(body())
    async with stack:
        collected = await _collect_unless_disconnected(request, chunks)
    if collected is None:
        record["outcome"] = "client_disconnected"
        return Response(status_code=499)
    return JSONResponse(collect(collected))


GENERATION_RESPONSES = {**STREAMING_RESPONSE, **error_responses(400, 401, 404, 413, 429, 500, 503)}


@router.post("/v1/chat/completions", responses=GENERATION_RESPONSES)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    """Chat completion in the OpenAI shape; `stream: true` answers with SSE chunks."""
    session = session_key_of(request)

    def open_chunks(engine, model_id: str) -> AsyncIterator[dict]:
        return chat_chunks(prepare_chat(body, engine, model_id, session), engine)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _respond(request, body.stream, include_usage, open_chunks, collect_chat_completion, body.model)


@router.post("/v1/completions", responses=GENERATION_RESPONSES)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    """Text completion in the OpenAI shape; `stream: true` answers with SSE chunks."""
    session = session_key_of(request)

    def open_chunks(engine, model_id: str) -> AsyncIterator[dict]:
        prepared = prepare_completion(body, engine, model_id, session)
        return completion_chunks(prepared, engine, body.logprobs is not None)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _respond(request, body.stream, include_usage, open_chunks, collect_completion, body.model)
