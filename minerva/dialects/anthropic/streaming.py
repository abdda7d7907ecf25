"""Anthropic's SSE body: named events (`event: name`), `ping` while waiting, errors as an `error` event."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from minerva.core.errors import InternalError, MinervaError
from minerva.core.events import Event, StreamFailed
from minerva.dialects.anthropic.errors import anthropic_error
from minerva.dialects.anthropic.message import MessageEncoder

logger = logging.getLogger(__name__)

PING = {"type": "ping"}


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """One named SSE event of compact JSON."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {payload}\n\n".encode()


async def anthropic_sse(encoder: MessageEncoder, events: AsyncIterator[Event | None]) -> AsyncIterator[bytes]:
    """The SSE byte stream of a message (None in `events` is a keep-alive: a ping); a failure ends it in-band."""
    try:
        for name, data in encoder.opening():  # sent at once: the headers go out before prompt processing
            yield sse_event(name, data)
        async for event in events:
            if event is None:
                yield sse_event("ping", PING)
            elif isinstance(event, StreamFailed):
                yield sse_event("error", anthropic_error(event.error))
                return
            else:
                for name, data in encoder.encode(event):
                    yield sse_event(name, data)
    except MinervaError as exc:
        yield sse_event("error", anthropic_error(exc))
    except Exception:  # the stream has started: report in-band, never a traceback
        logger.exception("stream failed")
        yield sse_event("error", anthropic_error(InternalError("internal error while generating")))
