"""Server-sent events: chunks as `data:` lines, keep-alive comments while waiting, errors in-band."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse

from minerva.errors import MinervaError

logger = logging.getLogger(__name__)

KEEPALIVE = b": keep-alive\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def encode_event(payload: dict) -> bytes:
    """One `data:` event."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def with_keepalive(items: AsyncIterator[dict], interval_s: float) -> AsyncIterator[dict | None]:
    """Yield items as they come, and None whenever `interval_s` passes without one."""
    iterator = aiter(items)
    pending: asyncio.Task | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield None
                continue
            task, pending = pending, None
            try:
                yield task.result()
            except StopAsyncIteration:
                return
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        with contextlib.suppress(BaseException):
            await iterator.aclose()  # type: ignore[attr-defined]


async def sse_body(chunks: AsyncIterator[dict], include_usage: bool, keepalive_s: float) -> AsyncIterator[bytes]:
    """The SSE byte stream of a response; a failure after the first byte becomes an error event."""
    yield KEEPALIVE  # headers and a first byte go out at once, before any prompt processing
    try:
        async for chunk in with_keepalive(chunks, keepalive_s):
            if chunk is None:
                yield KEEPALIVE
            elif chunk.get("usage") is not None and not chunk["choices"]:
                if include_usage:
                    yield encode_event(chunk)
            else:
                yield encode_event(chunk)
    except MinervaError as exc:
        yield encode_event(exc.to_envelope())
        return
    except Exception:  # the stream has started: report in-band, never a traceback
        logger.exception("stream failed")
        yield encode_event({"error": {"message": "internal error while generating", "type": "server_error",
                                      "param": None, "code": "internal_error"}})
        return
    yield b"data: [DONE]\n\n"


def sse_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    """A text/event-stream response around an SSE body."""
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
