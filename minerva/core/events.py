"""The typed event stream every generation yields and every dialect encodes.

A chat or completion response is a sequence of these events: deltas of text, reasoning and tool
calls for each choice (a tool call's arguments in fragments as they are generated; a ToolCallDropped
takes back a call that never completed), one ChoiceEnd per choice, then one Usage; a StreamFailed
ends a stream that broke after it started. No event knows any wire format.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

from minerva.core.errors import MinervaError


@dataclass(frozen=True)
class TokenLogprob:
    """A candidate token and its log-probability."""

    token_id: int
    piece: bytes
    logprob: float


@dataclass(frozen=True)
class TokenEvent:
    """One sampled token. `piece` is raw bytes: a UTF-8 character may span several tokens."""

    token_id: int
    piece: bytes
    logprob: float | None = None
    top_logprobs: tuple[TokenLogprob, ...] = ()
    drafted: int = 0  # speculation: draft tokens verified in the step this token was the first of
    from_draft: bool = False  # speculation: the token was a draft token the sampler kept


Logprobs = tuple[TokenEvent, ...]


@dataclass(frozen=True)
class TextDelta:
    """Visible answer text of one choice; an empty text carries only the logprobs of held-back tokens."""

    text: str
    choice: int = 0
    logprobs: Logprobs = ()


@dataclass(frozen=True)
class ReasoningDelta:
    """Reasoning ("thinking") text of one choice."""

    text: str
    choice: int = 0
    logprobs: Logprobs = ()


@dataclass(frozen=True)
class ToolCallStart:
    """The start of a tool call: its index among the choice's calls, its id and function name."""

    index: int
    id: str
    name: str
    choice: int = 0
    logprobs: Logprobs = ()


@dataclass(frozen=True)
class ToolCallArgs:
    """A fragment of a tool call's arguments; the fragments of one call concatenate to a JSON object."""

    index: int
    fragment: str
    choice: int = 0
    logprobs: Logprobs = ()


@dataclass(frozen=True)
class ToolCallDropped:
    """A started tool call that is no call after all: its arguments never completed (generation ended inside
    them) or are not a JSON object. A stream has shown it in part; a whole response leaves it out."""

    index: int
    choice: int = 0
    logprobs: Logprobs = ()


FinishReason = Literal["end", "stop_sequence", "length", "tool_calls"]
"""Why a choice ended: the model ended its turn, a stop sequence matched, the token budget ran out,
or it ended by calling tools."""


@dataclass(frozen=True)
class ChoiceEnd:
    """The last event of one choice."""

    choice: int
    reason: FinishReason
    stop_sequence: str | None = None  # the stop sequence that matched, for reason "stop_sequence"


@dataclass(frozen=True)
class Usage:
    """What the whole response cost, sent once after every choice has ended."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # of completion_tokens, the tokens of reasoning text
    draft_tokens: int = 0  # speculation: draft tokens verified
    draft_accepted: int = 0  # ... and kept

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class StreamFailed:
    """The stream broke after it started; nothing follows."""

    error: MinervaError


ParsedDelta = TextDelta | ReasoningDelta | ToolCallStart | ToolCallArgs | ToolCallDropped
"""What an output parser yields: the deltas of one choice."""

Event = TextDelta | ReasoningDelta | ToolCallStart | ToolCallArgs | ToolCallDropped | ChoiceEnd | Usage | StreamFailed
"""Anything a generation stream yields."""

OUTPUT_EVENTS = (TextDelta, ReasoningDelta, ToolCallStart, ToolCallArgs)


def is_output(event: object) -> bool:
    """Whether the event shows the client something the model produced (for time-to-first-token)."""
    if isinstance(event, TextDelta | ReasoningDelta):
        return bool(event.text)
    return isinstance(event, ToolCallStart | ToolCallArgs)


EventT = TypeVar("EventT", bound=Event)


def without_dropped_calls(events: Iterable[EventT]) -> list[EventT | TextDelta]:
    """The events of a whole response less every dropped tool call (its start, its fragments and the drop);
    the logprobs they carried stay, on empty text deltas."""
    listed = list(events)
    dropped = {(event.choice, event.index) for event in listed if isinstance(event, ToolCallDropped)}
    if not dropped:
        return listed
    kept: list[EventT | TextDelta] = []
    for event in listed:
        if not isinstance(event, ToolCallStart | ToolCallArgs | ToolCallDropped) or (
                (event.choice, event.index) not in dropped):
            kept.append(event)
        elif event.logprobs:
            kept.append(TextDelta("", event.choice, event.logprobs))
    return kept
