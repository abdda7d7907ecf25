"""One decode path for every endpoint: engine token events → text pieces with stops applied."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from minerva.core.errors import ContextLengthExceededError
from minerva.core.events import FinishReason, TokenEvent
from minerva.engine.base import Engine, GenerationEnd, GenerationRequest, PromptProcessed
from minerva.generation.text_stream import IncrementalDecoder, StopMatcher


@dataclass(frozen=True)
class TextPiece:
    """Decoded text ready to emit, with the logprobs of the tokens that produced it."""

    text: str
    tokens: tuple[TokenEvent, ...] = ()


@dataclass(frozen=True)
class Finished:
    """How one choice ended and what it cost."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    stop_sequence: str | None = None


ChoiceEvent = TextPiece | Finished


def clamp_max_tokens(requested: int | None, prompt_tokens: int, n_ctx: int, param: str) -> int:
    """The completion budget: what was asked, clamped to what the context has left (never refused)."""
    room = n_ctx - prompt_tokens
    if room < 1:
        raise ContextLengthExceededError(n_ctx, prompt_tokens, param=param)
    return room if requested is None else max(0, min(requested, room))


async def generate_choice(
    engine: Engine, request: GenerationRequest, stops: Sequence[str]
) -> AsyncIterator[ChoiceEvent]:
    """Run one sequence: decode UTF-8 safely, cut at stop sequences, end with a Finished event."""
    decoder = IncrementalDecoder()
    matcher = StopMatcher(tuple(stops))
    completion_tokens = 0
    cached_tokens = 0
    if request.max_tokens == 0:
        yield Finished("length", len(request.prompt_tokens), 0, 0)
        return
    async with contextlib.aclosing(engine.generate(request)) as events:
        async for event in events:
            if isinstance(event, PromptProcessed):
                cached_tokens = event.cached_tokens
            elif isinstance(event, TokenEvent):
                completion_tokens += 1
                text = matcher.feed(decoder.feed(event.piece))
                yield TextPiece(text, (event,))
                if matcher.stopped:
                    yield Finished("stop_sequence", len(request.prompt_tokens), completion_tokens, cached_tokens,
                                   matcher.matched)
                    return
            elif isinstance(event, GenerationEnd):
                tail = matcher.feed(decoder.flush())
                tail += matcher.flush()
                if tail:
                    yield TextPiece(tail)
                reason: FinishReason = "end" if event.finish_reason == "stop" else "length"
                yield Finished(reason, event.prompt_tokens, event.completion_tokens, event.cached_tokens)
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
