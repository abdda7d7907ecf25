"""What every engine's sampler shares: seeds, the sampled-token record and its event."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from minerva.engine.base import SamplingParams, TokenEvent, TokenLogprob

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


def token_event(
    token_id: int,
    piece: Callable[[int], bytes],
    params: SamplingParams,
    logprobs: Callable[[int, int], tuple[float, Iterable[tuple[int, float]]]],
) -> TokenEvent:
    """The event of one sampled token, with its logprob and top alternatives when the request asked."""
    if not params.logprobs:
        return TokenEvent(token_id=token_id, piece=piece(token_id))
    chosen, top = logprobs(token_id, max(0, min(params.top_logprobs, 20)))
    alternatives = tuple(TokenLogprob(i, piece(i), lp) for i, lp in top)
    return TokenEvent(token_id=token_id, piece=piece(token_id), logprob=chosen, top_logprobs=alternatives)
