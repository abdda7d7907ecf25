"""Ollama's streaming body: one JSON object per line (NDJSON, no SSE framing); a failure is an `error` line."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from minerva.api.streaming import ndjson_line
from minerva.core.errors import InternalError, MinervaError
from minerva.core.events import Event, StreamFailed
from minerva.dialects.ollama.chunks import ChunkEncoder
from minerva.dialects.ollama.errors import ollama_error

logger = logging.getLogger(__name__)


async def ollama_ndjson(encoder: ChunkEncoder, events: AsyncIterator[Event | None]) -> AsyncIterator[bytes]:
    """The NDJSON lines of a response (None in `events`, a keep-alive, writes nothing: NDJSON has no comment
    line); a failure after the start ends it with `{"error": ...}`, as Ollama's do."""
    try:
        async for event in events:
            if event is None:
                continue
            if isinstance(event, StreamFailed):
                yield ndjson_line(ollama_error(event.error))
                return
            for item in encoder.encode(event):
                yield ndjson_line(item)
    except MinervaError as exc:
        yield ndjson_line(ollama_error(exc))
    except Exception:  # the stream has started: report in-band, never a traceback
        logger.exception("stream failed")
        yield ndjson_line(ollama_error(InternalError("internal error while generating")))
