"""What every engine shares: seeds, sampled tokens, the worker-to-asyncio event relay, input checks."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from minerva.engine.base import GenerationEnd, GenerationEvent
from minerva.errors import ContextLengthExceededError, InvalidRequestError

WHOLE_CONTEXT_WINDOW = 8192  # penalty_last_n < 0 means "the whole context"
MAX_SEED = 0xFFFFFFFE  # 0xFFFFFFFF is llama.cpp's "pick a random seed"


def resolve_seed(seed: int | None) -> int:
    """The 32-bit seed a sequence's sampler gets: the request's, or a fresh random one."""
    if seed is None:
        return secrets.randbelow(MAX_SEED + 1)
    return min(seed & 0xFFFFFFFF, MAX_SEED)


@dataclass(frozen=True)
class SampledToken:
    """The token a sampler chose; `dead_end` when a grammar allowed no token at all."""

    token_id: int
    dead_end: bool = False


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


def idle_stats(n_ctx: int) -> dict[str, int]:
    """The stats of an engine with no generation worker (an embedding-only model)."""
    return {"active_slots": 0, "total_slots": 0, "queued": 0, "n_ctx": n_ctx, "cached_tokens_total": 0}


def check_embedding_inputs(inputs: list[list[int]], n_ctx: int, n_vocab: int) -> None:
    """Refuse empty, over-long or out-of-vocabulary inputs before they reach a backend."""
    for tokens in inputs:
        if not tokens:
            raise InvalidRequestError("An embedding input is empty.", param="input")
        if len(tokens) > n_ctx:
            raise ContextLengthExceededError(n_ctx, len(tokens), param="input")
        if min(tokens) < 0 or max(tokens) >= n_vocab:
            raise InvalidRequestError("The input contains token ids outside the vocabulary.", param="input")
