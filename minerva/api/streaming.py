"""Streaming bodies every dialect frames its events with: SSE lines or NDJSON lines, keep-alive marks while waiting."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import TypeVar

from starlette.responses import StreamingResponse

T = TypeVar("T")

KEEPALIVE = b": keep-alive\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def sse_data(payload: dict) -> bytes:
    """One unnamed `data:` event of compact JSON."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


_END = object()


async def with_keepalive(items: AsyncIterator[T], interval_s: float) -> AsyncIterator[T | None]:
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



def sse_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    """A text/event-stream response around an SSE body."""
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)


NDJSON_MEDIA_TYPE = "application/x-ndjson"
NDJSON_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


LINE_BREAKS_JSON_KEEPS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
"""Characters JSON leaves unescaped that line readers such as Python's splitlines (httpx) break lines at."""


def ndjson_line(payload: dict) -> bytes:
    """One NDJSON line: compact JSON of one object with no line break inside, then a newline."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in LINE_BREAKS_JSON_KEEPS.items():
        if char in text:
            text = text.replace(char, escaped)
    return text.encode() + b"\n"


def ndjson_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    """An application/x-ndjson response around a body of NDJSON lines (Ollama's streaming)."""
    return StreamingResponse(body, media_type=NDJSON_MEDIA_TYPE, headers=NDJSON_HEADERS)
