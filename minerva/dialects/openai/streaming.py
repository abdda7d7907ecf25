"""The OpenAI SSE body: unnamed `data:` chunks, errors in-band in the OpenAI envelope, then `[DONE]`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Protocol

from minerva.api.streaming import KEEPALIVE, sse_data
from minerva.core.errors import InternalError, MinervaError
from minerva.core.events import Event, StreamFailed
from minerva.dialects.openai.errors import openai_error

logger = logging.getLogger(__name__)


class ChunkEncoder(Protocol):
    """Writes one response's events as OpenAI chunk objects."""

    def opening(self) -> list[dict]:
        """Chunks sent before the first event."""
        ...

    def encode(self, event: Event) -> dict | None:
        """The chunk of one event, or None when the stream does not show it."""
        ...


async def openai_sse(encoder: ChunkEncoder, events: AsyncIterator[Event | None]) -> AsyncIterator[bytes]:
    """The SSE byte stream of a response (None in `events` is a keep-alive); a failure becomes an error event."""
    yield KEEPALIVE  # headers and a first byte go out at once, before any prompt processing
    try:
        for chunk in encoder.opening():
            yield sse_data(chunk)
        async for event in events:
            if event is None:
                yield KEEPALIVE
            elif isinstance(event, StreamFailed):
                yield sse_data(openai_error(event.error))
                return
            else:
                chunk = encoder.encode(event)
                if chunk is not None:
                    yield sse_data(chunk)
    except MinervaError as exc:
        yield sse_data(openai_error(exc))
        return
    except Exception:  # the stream has started: report in-band, never a traceback
        logger.exception("stream failed")
        yield sse_data(openai_error(InternalError("internal error while generating")))
        return
    yield b"data: [DONE]\n\n"
