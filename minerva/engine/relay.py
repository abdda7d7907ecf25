"""The worker-to-asyncio event relay every engine uses: sinks, batched delivery, submit → relay → cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from minerva.engine.base import GenerationEnd, GenerationEvent


class EventSink:
    """Where one sequence's events go: an asyncio queue read on the event loop that made the sink."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.lost = False  # the event loop closed: nobody is listening any more

    def send(self, event: object) -> None:
        """Deliver one event from a worker thread now (one event-loop wake-up per call)."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:
            self.lost = True

    async def events(self) -> AsyncIterator[GenerationEvent]:
        """Yield the worker's events until GenerationEnd; re-raise the exceptions it sends."""
        while True:
            event = await self.queue.get()
            if isinstance(event, BaseException):
                raise event
            yield event  # type: ignore[misc]
            if isinstance(event, GenerationEnd):
                return


def _put_all(items: list[tuple[asyncio.Queue, object]]) -> None:
    for queue, event in items:
        queue.put_nowait(event)


class EventOutbox:
    """A worker's events of one step, delivered with one wake-up per event loop instead of one per event.

    Waking the event loop costs a syscall and a context switch; on a busy two-core machine that came
    to a tenth of a millisecond per token, paid while the decode threads wait.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[EventSink, object]] = []

    def put(self, sink: EventSink, event: object) -> None:
        """Queue an event for the next flush."""
        self._pending.append((sink, event))

    def flush(self) -> None:
        """Deliver everything queued; sinks whose event loop is gone are marked lost."""
        if not self._pending:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[EventSink, object]]] = {}
        for sink, event in self._pending:
            by_loop.setdefault(sink.loop, []).append((sink, event))
        self._pending = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, [(sink.queue, event) for sink, event in items])
            except RuntimeError:
                for sink, _ in items:
                    sink.lost = True


async def relay_events(sink: EventSink, submit: Callable[[], None], cancel: Callable[[], None]) -> AsyncIterator[GenerationEvent]:
    """Submit a sequence to a worker and yield its events; leaving early (or failing) cancels it."""
    submit()
    try:
        async for event in sink.events():
            yield event
    finally:
        cancel()
