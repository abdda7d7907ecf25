"""The Responses routes: create (streamed or whole), retrieve and delete stored responses."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from minerva.api.errors import Dialect
from minerva.api.responding import GenerationReply, output_policy, respond, session_key_of
from minerva.api.state import server_state
from minerva.core.errors import ContextLengthExceededError, NotFoundError
from minerva.core.events import Event, StreamFailed
from minerva.dialects.openai.errors import openai_error
from minerva.dialects.openai.protocol import STREAMING_RESPONSE, error_responses
from minerva.dialects.openai_responses.convert import Converted, chat_request_from
from minerva.dialects.openai_responses.output import ResponseWriter, new_id
from minerva.dialects.openai_responses.protocol import ResponsesRequest
from minerva.dialects.openai_responses.store import ResponseStore, StoredResponse
from minerva.dialects.openai_responses.streaming import fold_response, responses_sse
from minerva.engine.base import Engine
from minerva.generation.chat import chat_events, prepare_chat

router = APIRouter()


def response_shell(body: ResponsesRequest, model_id: str) -> dict:
    """The response object's fields that echo the request (output, status and usage are the writer's)."""
    fmt = body.text.format.model_dump(by_alias=True, exclude_none=True) if body.text and body.text.format else None
    return {
        "id": new_id("resp"), "object": "response", "created_at": int(time.time()), "status": "in_progress",
        "background": False, "error": None, "incomplete_details": None, "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens, "model": model_id, "output": [],
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": body.reasoning.effort if body.reasoning else None,
                      "summary": body.reasoning.summary if body.reasoning else None},
        "store": body.stores(), "temperature": body.temperature, "text": {"format": fmt or {"type": "text"}},
        "tool_choice": (body.tool_choice.model_dump(exclude_none=True) if hasattr(body.tool_choice, "model_dump")
                        else body.tool_choice or "auto"),
        "tools": [tool.model_dump(exclude_none=True) for tool in body.tools or ()],
        "top_p": body.top_p, "truncation": "disabled", "usage": None, "user": body.user,
        "metadata": body.metadata or {},
    }


def _session_key(body: ResponsesRequest, request: Request) -> str | None:
    """prompt_cache_key (Codex sends its thread id), else the session-id or x-session-affinity header."""
    return body.prompt_cache_key or request.headers.get("session-id") or session_key_of(request)


async def _failed_at_once(error: ContextLengthExceededError) -> AsyncIterator[Event]:
    yield StreamFailed(error)


def _history(store: ResponseStore, previous_id: str | None) -> tuple:
    if previous_id is None:
        return ()
    stored = store.get(previous_id)
    if stored is None:
        raise NotFoundError(f"Previous response with id '{previous_id}' not found.", param="previous_response_id")
    return stored.conversation


@router.post("/v1/responses", responses={**STREAMING_RESPONSE, **error_responses(400, 401, 404, 413, 429, 500, 503)})
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    """A model response in the Responses shape; `stream: true` answers with named SSE events."""
    store = server_state(request).responses_store
    converted: Converted = chat_request_from(body, _history(store, body.previous_response_id),
                                             _session_key(body, request))

    def open_reply(engine: Engine, model_id: str) -> GenerationReply:
        writer = ResponseWriter(response_shell(body, model_id), converted.tools, body.wants_encrypted_reasoning())

        def finished(done: ResponseWriter) -> None:
            if body.stores():
                conversation = converted.conversation + (done.assistant_message(),)
                store.put(done.response["id"], StoredResponse(done.response, conversation))

        try:
            events = chat_events(prepare_chat(converted.request, engine, model_id, output_policy(request)), engine)
        except ContextLengthExceededError as exc:
            if not body.stream:
                raise
            events = _failed_at_once(exc)  # streamed, an overflow is response.failed (Codex compacts on it)
        return GenerationReply(events, functools.partial(responses_sse, writer, finished),
                               functools.partial(fold_response, writer, finished))

    return await respond(request, body.model, body.stream, open_reply)


@router.api_route("/v1/responses/{response_id}", methods=["GET", "DELETE"], responses=error_responses(401, 404))
async def stored_response(response_id: str, request: Request) -> JSONResponse:
    """GET: a stored response; DELETE: forget it. A 404 in the OpenAI envelope if there is none.

    One route for both methods, so a 405 lists both in its Allow header.
    """
    store = server_state(request).responses_store
    missing = NotFoundError(f"Response with id '{response_id}' not found.", param="response_id")
    if request.method == "DELETE":
        if not store.delete(response_id):
            raise missing
        return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})
    stored = store.get(response_id)
    if stored is None:
        raise missing
    return JSONResponse(stored.response)


DIALECT = Dialect("openai-responses", router, openai_error, ("/v1/responses",))
