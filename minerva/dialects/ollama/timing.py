"""The durations Ollama reports (nanoseconds), measured on the request as its events pass."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from minerva.core.events import Event, Usage


def now_ns() -> int:
    """The monotonic clock in nanoseconds."""
    return time.perf_counter_ns()


@dataclass
class Timings:
    """When the request arrived, its model was ready, generation began, the first event came and the last.

    Mutable on purpose: each moment is written once, as it happens, and read by the final object.
    """

    arrived: int
    loaded: int | None = None
    generation_started: int | None = None
    first_event: int | None = None
    ended: int | None = None

    def durations(self) -> dict[str, int]:
        """total, load, prompt-evaluation and evaluation durations in nanoseconds.

        The prompt is evaluated from the start of generation to its first output (queueing for a slot
        included); evaluation runs from there to the last token.
        """
        ended = self.ended if self.ended is not None else now_ns()
        loaded = self.loaded if self.loaded is not None else ended
        started = self.generation_started if self.generation_started is not None else loaded
        first = self.first_event if self.first_event is not None else ended
        return {"total_duration": ended - self.arrived, "load_duration": loaded - self.arrived,
                "prompt_eval_duration": first - started, "eval_duration": ended - first}


async def timed(events: AsyncIterator[Event], timings: Timings) -> AsyncIterator[Event]:
    """Pass a generation's events through, noting when it started, its first event and its Usage (the end)."""
    timings.generation_started = now_ns()
    async with contextlib.aclosing(events) as items:  # type: ignore[type-var]
        async for event in items:
            if timings.first_event is None:
                timings.first_event = now_ns()
            if isinstance(event, Usage):
                timings.ended = now_ns()
            yield event
