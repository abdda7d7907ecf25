"""The Anthropic routes: POST /v1/messages and /v1/messages/count_tokens; each only converts and dispatches."""

from __future__ import annotations

import functools

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from minerva.api.errors import Dialect
from minerva.api.responding import GenerationReply, output_policy, respond
from minerva.api.state import server_state
from minerva.core.errors import ContextLengthExceededError
from minerva.dialects.anthropic.convert import chat_request_from, session_key
from minerva.dialects.anthropic.errors import anthropic_error
from minerva.dialects.anthropic.message import MessageEncoder, MessageHeader, fold_message, new_message_id
from minerva.dialects.anthropic.models import resolve_model
from minerva.dialects.anthropic.protocol import CountTokensRequest, MessagesRequest, error_responses
from minerva.dialects.anthropic.streaming import anthropic_sse
from minerva.engine.base import Engine
from minerva.generation.chat import chat_events, prepare_chat

router = APIRouter()

SESSION_HEADER = "x-claude-code-session-id"

MESSAGE_RESPONSES = {
    200: {"description": "A message object, or with `stream: true` Anthropic's named server-sent events",
          "content": {"application/json": {}, "text/event-stream": {}}},
    **error_responses(400, 401, 404, 413, 429, 500, 503),
}


@router.post("/v1/messages", responses=MESSAGE_RESPONSES)
async def create_message(body: MessagesRequest, request: Request) -> Response:
    """A message in Anthropic's shape; `stream: true` answers with its named SSE events."""
    model_id = resolve_model(request, body.model)
    chat = chat_request_from(body, session_key(body, request.headers.get(SESSION_HEADER)))

    def open_reply(engine: Engine, local_id: str) -> GenerationReply:
        prepared = prepare_chat(chat, engine, local_id, output_policy(request))
        header = MessageHeader(new_message_id(), body.model, len(prepared.generations[0].prompt_tokens))
        return GenerationReply(chat_events(prepared, engine), functools.partial(anthropic_sse, MessageEncoder(header)),
                               functools.partial(fold_message, header))

    return await respond(request, model_id, body.stream, open_reply)


@router.post("/v1/messages/count_tokens", responses=error_responses(400, 401, 404, 413, 500, 503))
async def count_tokens(body: CountTokensRequest, request: Request) -> JSONResponse:
    """The prompt's tokens, rendered and tokenized exactly as /v1/messages would (a prompt too long is counted too)."""
    state = server_state(request)
    model = state.registry.get(resolve_model(request, body.model))
    chat = chat_request_from(body, None)
    async with state.pool.use(model) as engine:
        try:
            tokens = len(prepare_chat(chat, engine, model.id).generations[0].prompt_tokens)
        except ContextLengthExceededError as exc:
            tokens = exc.prompt_tokens
    return JSONResponse({"input_tokens": tokens})


DIALECT = Dialect("anthropic", router, anthropic_error, ("/v1/messages",))
