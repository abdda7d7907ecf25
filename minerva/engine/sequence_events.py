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


async def relay_events(events: asyncio.Queue) -> AsyncIterator[GenerationEvent]:
    """Yield a worker thread's events for one sequence until GenerationEnd; re-raise its exceptions."""
    while True:
        event = await events.get()
        if isinstance(event, BaseException):
            raise event
        yield event
        if isinstance(event, GenerationEnd):
            return


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
