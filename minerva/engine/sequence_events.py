"""What every engine shares around sampling and its worker thread: seeds, sampled tokens, event relay."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from minerva.engine.base import GenerationEnd, GenerationEvent

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


async def relay_events(events: asyncio.Queue) -> AsyncIterator[GenerationEvent]:
    """Yield a worker thread's events for one sequence until GenerationEnd; re-raise its exceptions."""
    while True:
        event = await events.get()
        if isinstance(event, BaseException):
            raise event
        yield event
        if isinstance(event, GenerationEnd):
            return
