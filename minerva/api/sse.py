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


_END = object()


async def with_keepalive(items: AsyncIterator[dict], interval_s: float) -> AsyncIterator[dict | None]:
    """Yield items as they come, and None whenever `interval_s` passes without one.

    One task pumps the items into a queue and a timer adds None when the stream has been idle; no
    per-item task or timeout, which cost more than the rest of the chunk path together.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    last = loop.time()

    async def pump() -> None:
        try:
            async with contextlib.aclosing(items) as source:  # type: ignore[type-var]
                async for item in source:
                    queue.put_nowait(item)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the consumer
            queue.put_nowait(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            queue.put_nowait(_END)

    def tick() -> None:
        nonlocal timer
        idle = loop.time() - last
        if idle >= interval_s:
            queue.put_nowait(None)
            idle = 0.0
        timer = loop.call_later(interval_s - idle, tick)

    task = loop.create_task(pump())
    timer = loop.call_later(interval_s, tick)
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            if item is not None:
                last = loop.time()
            yield item  # type: ignore[misc]
    finally:
        timer.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task


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
