"""One decode path for every endpoint: engine token events → text pieces, with stop sequences and the
server's output policy (a default budget, the repetition guard) applied."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from minerva.core.errors import ContextLengthExceededError
from minerva.core.events import FinishReason, TokenEvent
from minerva.engine.base import Engine, GenerationEnd, GenerationRequest, PromptProcessed
from minerva.generation.repetition import Repetition, RepetitionDetector, RepetitionLimits
from minerva.generation.text_stream import IncrementalDecoder, StopMatcher

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 4096
"""The output bound of a request that sets none: long answers finish, and a model that never ends its turn
stops long before a large context is full."""


@dataclass(frozen=True)
class OutputPolicy:
    """The server's bounds on one request's output: a default budget and the repetition guard."""

    default_max_tokens: int | None = DEFAULT_MAX_TOKENS  # for a request that sets no limit; None: the context end
    repetition: RepetitionLimits | None = RepetitionLimits()  # None: no guard
    cut_repetition: bool = True  # False: a runaway is only logged (observe mode)
    request_id: str = "-"  # for the guard's log line


@dataclass(frozen=True)
class TextPiece:
    """Decoded text ready to emit, with the logprobs of the tokens that produced it."""

    text: str
    tokens: tuple[TokenEvent, ...] = ()


@dataclass
class DraftCount:
    """Speculation's draft tokens over one choice's token events."""

    drafted: int = 0
    accepted: int = 0

    def add(self, event: TokenEvent) -> None:
        """Count one token event."""
        self.drafted += event.drafted
        self.accepted += event.from_draft


@dataclass(frozen=True)
class Finished:
    """How one choice ended and what it cost."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    stop_sequence: str | None = None
    reasoning_tokens: int = 0  # of completion_tokens, those spent reasoning (counted by the output parser's side)
    draft_tokens: int = 0  # speculation: draft tokens verified
    draft_accepted: int = 0  # ... and kept (each one a completion token)


ChoiceEvent = TextPiece | Finished


def clamp_max_tokens(requested: int | None, prompt_tokens: int, n_ctx: int, param: str,
                     default: int | None = None) -> int:
    """The completion budget: what was asked (else the server's default), clamped to what the context has
    left (never refused)."""
    room = n_ctx - prompt_tokens
    if room < 1:
        raise ContextLengthExceededError(n_ctx, prompt_tokens, param=param)
    wanted = default if requested is None else requested
    return room if wanted is None else max(0, min(wanted, room))


class _RepetitionGuard:
    """The detector over one choice's tokens, and what to do when it fires."""

    def __init__(self, limits: RepetitionLimits, policy: OutputPolicy, request: GenerationRequest):
        self._detector = RepetitionDetector(limits)
        self._policy = policy
        self._prompt_tokens = len(request.prompt_tokens)
        self._reported = False

    def cuts(self, token: TokenEvent) -> bool:
        """Take the next token; True when the choice must end here."""
        found = self._detector.feed(token.piece)  # by bytes: the same text is the same token
        if found is None or self._reported:
            return False
        self._reported = True
        self._log(found)
        return self._policy.cut_repetition

    def _log(self, found: Repetition) -> None:
        logger.info("%s repetition guard %s after %d completion tokens: the last %d tokens repeat a %d-token block "
                    "%.1f times (prompt_tokens=%d)", self._policy.request_id,
                    "ended the choice" if self._policy.cut_repetition else "observed a runaway (not cut)",
                    self._detector.fed, found.tokens, found.period, found.repeats, self._prompt_tokens)


async def generate_choice(
    engine: Engine, request: GenerationRequest, stops: Sequence[str], policy: OutputPolicy = OutputPolicy()
) -> AsyncIterator[ChoiceEvent]:
    """Run one sequence: decode UTF-8 safely, cut at stop sequences and at runaway repetition (finish reason
    `length`: the server cut the answer short), end with a Finished event."""
    decoder = IncrementalDecoder()
    matcher = StopMatcher(tuple(stops))
    guard = None if policy.repetition is None else _RepetitionGuard(policy.repetition, policy, request)
    completion_tokens = 0
    cached_tokens = 0
    drafts = DraftCount()
    if request.max_tokens == 0:
        yield Finished("length", len(request.prompt_tokens), 0, 0)
        return
    async with contextlib.aclosing(engine.generate(request)) as events:
        async for event in events:
            if isinstance(event, PromptProcessed):
                cached_tokens = event.cached_tokens
            elif isinstance(event, TokenEvent):
                completion_tokens += 1
                drafts.add(event)
                text = matcher.feed(decoder.feed(event.piece))
                yield TextPiece(text, (event,))
                if matcher.stopped:
                    yield Finished("stop_sequence", len(request.prompt_tokens), completion_tokens, cached_tokens,
                                   matcher.matched, draft_tokens=drafts.drafted, draft_accepted=drafts.accepted)
                    return
                if guard is not None and guard.cuts(event):
                    tail = matcher.feed(decoder.flush()) + matcher.flush()
                    if tail:
                        yield TextPiece(tail)
                    yield Finished("length", len(request.prompt_tokens), completion_tokens, cached_tokens,
                                   draft_tokens=drafts.drafted, draft_accepted=drafts.accepted)
                    return
            elif isinstance(event, GenerationEnd):
                tail = matcher.feed(decoder.flush())
                tail += matcher.flush()
                if tail:
                    yield TextPiece(tail)
                reason: FinishReason = "end" if event.finish_reason == "stop" else "length"
                yield Finished(reason, event.prompt_tokens, event.completion_tokens, event.cached_tokens,
                               draft_tokens=drafts.drafted, draft_accepted=drafts.accepted)
                return


async def merge_choices(streams: Sequence[AsyncIterator[ChoiceEvent]]) -> AsyncIterator[tuple[int, ChoiceEvent]]:
    """Interleave several choices' events as they come, tagged with the choice index."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, ChoiceEvent | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[ChoiceEvent]) -> None:
        try:
            async with contextlib.aclosing(stream) as events:  # type: ignore[type-var]
                async for event in events:
                    await queue.put((index, event))
        except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
            await queue.put((index, exc))
            return
        await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
