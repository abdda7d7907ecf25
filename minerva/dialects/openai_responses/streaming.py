"""The Responses SSE body (named events, keep-alive comments, a terminal event always) and the fold."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable

from minerva.api.streaming import KEEPALIVE
from minerva.core.errors import InternalError, MinervaError
from minerva.core.events import Event, StreamFailed
from minerva.dialects.openai_responses.output import ResponseWriter

logger = logging.getLogger(__name__)

Finished = Callable[[ResponseWriter], None]
"""Called once with the writer when its response is final (to store it)."""


def sse_event(event: dict) -> bytes:
    """One named SSE event: `event: <type>` and its JSON as `data:`."""
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


async def responses_sse(writer: ResponseWriter, finished: Finished,
                        events: AsyncIterator[Event | None]) -> AsyncIterator[bytes]:
    """The SSE byte stream of a response (None in `events` is a keep-alive); a failure is response.failed."""
    yield KEEPALIVE  # headers and a first byte go out at once, before any prompt processing
    terminal: list[dict] = []
    try:
        for item in writer.opening():
            yield sse_event(item)
        async for event in events:
            if event is None:
                yield KEEPALIVE
            elif writer.finished:
                continue
            elif isinstance(event, StreamFailed):
                terminal = writer.failed(event.error)
            else:
                out = writer.encode(event)
                if writer.finished:
                    terminal = out  # held back until the response is stored
                else:
                    for item in out:
                        yield sse_event(item)
        if not writer.finished:
            terminal = writer.finish()
    except MinervaError as exc:
        terminal = writer.failed(exc)
    except Exception:  # the stream has started: report in-band, never a traceback
        logger.exception("stream failed")
        terminal = writer.failed(InternalError("internal error while generating"))
    finished(writer)  # stored before the client can read the terminal event and ask for it
    for item in terminal:
        yield sse_event(item)


def fold_response(writer: ResponseWriter, finished: Finished, events: Iterable[Event]) -> dict:
    """The non-streamed response object of a whole event stream; a failure raises its error."""
    for event in events:
        if isinstance(event, StreamFailed):
            raise event.error
        writer.encode(event)
    writer.finish()
    finished(writer)
    return writer.response
