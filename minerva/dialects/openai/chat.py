"""OpenAI chat completions: core events → chat.completion.chunk objects, and the fold into chat.completion."""

from __future__ import annotations

from collections.abc import Iterable

from minerva.core.events import (
    ChoiceEnd,
    Event,
    Logprobs,
    ReasoningDelta,
    StreamFailed,
    TextDelta,
    ToolCallArgs,
    ToolCallDropped,
    ToolCallStart,
    Usage,
    without_dropped_calls,
)
from minerva.dialects.openai.shapes import FINISH_REASONS, ResponseHeader, logprob_entry, usage_dict


def chat_logprobs(tokens: Logprobs) -> list[dict]:
    """The `logprobs.content` entries of these tokens, each with its top alternatives."""
    return [{**logprob_entry(t), "top_logprobs": [logprob_entry(a) for a in t.top_logprobs]} for t in tokens]


def _logprobs_object(tokens: Logprobs) -> dict | None:
    return {"content": chat_logprobs(tokens), "refusal": None} if tokens else None


class ChatChunkEncoder:
    """Writes one response's events as chat.completion.chunk objects."""

    def __init__(self, header: ResponseHeader, n: int, include_usage: bool):
        self.header = header
        self.n = n
        self.include_usage = include_usage

    def opening(self) -> list[dict]:
        """The first chunk of every choice: the assistant role with empty content."""
        return [self._delta(index, {"role": "assistant", "content": ""}, ()) for index in range(self.n)]

    def _delta(self, index: int, delta: dict, logprobs: Logprobs) -> dict:
        return self.header.chunk([{"index": index, "delta": delta, "logprobs": _logprobs_object(logprobs),
                                   "finish_reason": None}])

    def encode(self, event: Event) -> dict | None:
        """The chunk for one event; None for an event this stream does not show (usage unless asked)."""
        if isinstance(event, TextDelta):
            return self._delta(event.choice, {"content": event.text} if event.text else {}, event.logprobs)
        if isinstance(event, ReasoningDelta):
            return self._delta(event.choice, {"reasoning_content": event.text}, event.logprobs)
        if isinstance(event, ToolCallStart):
            call = {"index": event.index, "id": event.id, "type": "function",
                    "function": {"name": event.name, "arguments": ""}}
            return self._delta(event.choice, {"tool_calls": [call]}, event.logprobs)
        if isinstance(event, ToolCallArgs):
            call = {"index": event.index, "function": {"arguments": event.fragment}}
            return self._delta(event.choice, {"tool_calls": [call]}, event.logprobs)
        if isinstance(event, ToolCallDropped):  # a chunk cannot take back what was sent; the finish reason says why
            return self._delta(event.choice, {}, event.logprobs) if event.logprobs else None
        if isinstance(event, ChoiceEnd):
            return self.header.chunk([{"index": event.choice, "delta": {}, "logprobs": None,
                                       "finish_reason": FINISH_REASONS[event.reason]}])
        if isinstance(event, Usage):
            return self.header.chunk([], usage=usage_dict(event)) if self.include_usage else None
        raise TypeError(f"no chat chunk for {event!r}")


class _ChoiceFold:
    """One choice's message, built up from its events."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict] = {}
        self.logprobs: list[dict] | None = None
        self.finish_reason: str | None = None

    def add(self, event: Event) -> None:
        logprobs = getattr(event, "logprobs", ())
        if logprobs:
            self.logprobs = (self.logprobs or []) + chat_logprobs(logprobs)
        if isinstance(event, TextDelta) and event.text:
            self.content.append(event.text)
        elif isinstance(event, ReasoningDelta) and event.text:
            self.reasoning.append(event.text)
        elif isinstance(event, ToolCallStart):
            self.tool_calls[event.index] = {"id": event.id, "type": "function",
                                            "function": {"name": event.name, "arguments": ""}}
        elif isinstance(event, ToolCallArgs):
            self.tool_calls[event.index]["function"]["arguments"] += event.fragment
        elif isinstance(event, ChoiceEnd):
            self.finish_reason = FINISH_REASONS[event.reason]

    def choice(self, index: int) -> dict:
        content = "".join(self.content) if self.content or not self.tool_calls else None
        message: dict = {"role": "assistant", "content": content, "refusal": None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        logprobs = {"content": self.logprobs, "refusal": None} if self.logprobs is not None else None
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": self.finish_reason}


def fold_chat_completion(header: ResponseHeader, n: int, events: Iterable[Event]) -> dict:
    """The non-streamed chat.completion object of a whole event stream (less dropped calls); a failure raises."""
    choices = [_ChoiceFold() for _ in range(n)]
    usage = None
    for event in without_dropped_calls(events):
        if isinstance(event, StreamFailed):
            raise event.error
        if isinstance(event, Usage):
            usage = usage_dict(event)
        else:
            choices[event.choice].add(event)
    return {"id": header.id, "object": "chat.completion", "created": header.created, "model": header.model,
            "system_fingerprint": None, "choices": [c.choice(i) for i, c in enumerate(choices)], "usage": usage}
