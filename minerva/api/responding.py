"""One way every dialect answers a generation: model → engine → admission → events → stream or fold."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.responses import StreamingResponse

from minerva.api.state import ServerState, server_state
from minerva.api.streaming import sse_response, with_keepalive
from minerva.core.events import Event
from minerva.engine.admission import refuse_when_full
from minerva.engine.base import Engine
from minerva.generation.decode import OutputPolicy
from minerva.generation.repetition import RepetitionLimits
from minerva.metrics import RequestRecord

DISCONNECT_POLL_S = 0.5


@dataclass(frozen=True)
class GenerationReply:
    """A generation ready to run, and how its dialect writes it streamed or whole."""

    events: AsyncIterator[Event]
    stream_body: Callable[[AsyncIterator[Event | None]], AsyncIterator[bytes]]  # None in the input: keep-alive
    fold: Callable[[list[Event]], dict]
    streaming_response: Callable[[AsyncIterator[bytes]], StreamingResponse] = sse_response


ReplyOpener = Callable[[Engine, str], GenerationReply]
"""Prepares a request on the loaded engine (4xx errors raise here, before any byte is sent)."""


def request_record(request: Request) -> RequestRecord | None:
    """The request's record for its access log line and metrics (None outside the middleware)."""
    return request.scope.get("state", {}).get("access")


async def recording(events: AsyncIterator[Event], record: RequestRecord | None) -> AsyncIterator[Event]:
    """Pass events through, noting first-output time and usage for the log line and metrics."""
    async with contextlib.aclosing(events) as items:  # type: ignore[type-var]
        async for event in items:
            if record is not None:
                record.observe_event(event)
            yield event


async def collect_unless_disconnected(request: Request, events: AsyncIterator[Event]) -> list[Event] | None:
    """All events of a non-streamed response; None (generation cancelled) if the client left."""
    collected: list[Event] = []

    async def drain() -> None:
        async with contextlib.aclosing(events) as items:  # type: ignore[type-var]
            async for event in items:
                collected.append(event)

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


def admit(state: ServerState, engine: Engine) -> None:
    """The queue rule, checked before the response starts so a full queue is a 429, not a stream error."""
    stats = engine.stats()
    refuse_when_full(stats.queued, stats.free_slots, state.settings.queue_limit)


async def respond(request: Request, model_id: str, stream: bool, open_reply: ReplyOpener) -> Response:
    """Run one generation request end to end in the dialect `open_reply` prepares."""
    state = server_state(request)
    record = request_record(request)
    if record is not None:
        record.model = model_id
    model = state.registry.get(model_id)
    stack = contextlib.AsyncExitStack()
    engine = await stack.enter_async_context(state.pool.use(model))
    try:
        admit(state, engine)
        if getattr(engine, "blocking_tokenizer", False):  # an upstream's tokenizer is a network call
            reply = await asyncio.to_thread(open_reply, engine, model.id)
        else:
            reply = open_reply(engine, model.id)
    except BaseException:
        await stack.aclose()
        raise
    events = recording(reply.events, record)
    if stream:
        async def body() -> AsyncIterator[bytes]:
            try:
                async with stack:
                    async for data in reply.stream_body(with_keepalive(events, state.settings.keepalive_interval_s)):
                        yield data
            except (asyncio.CancelledError, GeneratorExit):  # the client left mid-stream: generation is cancelled
                if record is not None:
                    record.outcome = "client_disconnected"
                raise
        return reply.streaming_response(body())
    async with stack:
        collected = await collect_unless_disconnected(request, events)
    if collected is None:
        if record is not None:
            record.outcome = "client_disconnected"
        return Response(status_code=499)
    return JSONResponse(reply.fold(collected))


def output_policy(request: Request) -> OutputPolicy:
    """The server's bounds on this request's output (default max tokens, repetition guard), tagged with its id."""
    settings = server_state(request).settings
    guard = settings.repetition_guard
    limits = None if guard == "off" else RepetitionLimits(
        settings.repetition_min_tokens, settings.repetition_max_period, settings.repetition_min_repeats)
    request_id = request.scope.get("state", {}).get("request_id", "-")
    return OutputPolicy(settings.default_max_tokens or None, limits, guard == "cut", request_id)


def session_key_of(request: Request) -> str | None:
    """The client's session id (OpenCode sends x-session-affinity / x-session-id)."""
    return request.headers.get("x-session-affinity") or request.headers.get("x-session-id")
