"""Streaming bodies every dialect frames its events with: SSE lines, keep-alive marks while waiting."""

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
