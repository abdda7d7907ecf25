"""Anthropic Messages: core events → the named stream events, and the fold of those into the `message`."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from minerva.core.events import (
    ChoiceEnd,
    Event,
    FinishReason,
    ReasoningDelta,
    StreamFailed,
    TextDelta,
    ToolCallArgs,
    ToolCallDropped,
    ToolCallStart,
    Usage,
    without_dropped_calls,
)

STOP_REASONS: dict[FinishReason, str] = {"end": "end_turn", "stop_sequence": "stop_sequence", "length": "max_tokens",
                                         "tool_calls": "tool_use"}
"""Anthropic's stop_reason for each way a choice ends."""

StreamEvent = tuple[str, dict[str, Any]]
"""A named stream event: its name (also its `type`) and its data."""


def new_message_id() -> str:
    """An Anthropic-style message id: msg_ and 24 hex digits."""
    return f"msg_{secrets.token_hex(12)}"


def tool_use_id(call_id: str) -> str:
    """A core tool call id (call_…) as an Anthropic tool_use id (toolu_…)."""
    return "toolu_" + call_id.removeprefix("call_")


def thinking_signature() -> str:
    """The signature that closes a thinking block: opaque, as Anthropic's are; nothing checks it here."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class MessageHeader:
    """What the message_start event says before any output: id, model name and prompt tokens."""

    id: str
    model: str
    input_tokens: int


def usage_dict(usage: Usage) -> dict[str, int]:
    """Anthropic's usage: input_tokens excludes the prompt tokens read from the prefix cache, as on its API."""
    return {"input_tokens": usage.prompt_tokens - usage.cached_tokens, "output_tokens": usage.completion_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": usage.cached_tokens}


class MessageEncoder:
    """Writes one response's core events as Anthropic stream events (content blocks opened and closed)."""

    def __init__(self, header: MessageHeader):
        self.header = header
        self.blocks = 0  # content blocks opened so far
        self.open_kind: str | None = None  # "text", "thinking" or "tool_use" while a block is open
        self.tool_blocks: dict[int, int] = {}  # tool call index → its block index
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None

    def opening(self) -> list[StreamEvent]:
        """message_start: the empty message with the prompt's token count."""
        message = {"id": self.header.id, "type": "message", "role": "assistant", "model": self.header.model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": self.header.input_tokens, "output_tokens": 0,
                             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}
        return [("message_start", {"type": "message_start", "message": message})]

    def _close(self) -> list[StreamEvent]:
        if self.open_kind is None:
            return []
        index = self.blocks - 1
        events: list[StreamEvent] = []
        if self.open_kind == "thinking":
            events.append(_delta(index, {"type": "signature_delta", "signature": thinking_signature()}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        self.open_kind = None
        return events

    def _open(self, kind: str, block: dict[str, Any]) -> list[StreamEvent]:
        events = self._close()
        events.append(("content_block_start", {"type": "content_block_start", "index": self.blocks,
                                               "content_block": block}))
        self.blocks += 1
        self.open_kind = kind
        return events

    def _delta_in(self, kind: str, block: dict[str, Any], delta: dict[str, Any]) -> list[StreamEvent]:
        events = self._open(kind, block) if self.open_kind != kind else []
        return [*events, _delta(self.blocks - 1, delta)]

    def encode(self, event: Event) -> list[StreamEvent]:
        """The stream events of one core event (none for an empty delta)."""
        if isinstance(event, TextDelta):
            if not event.text:
                return []
            return self._delta_in("text", {"type": "text", "text": ""}, {"type": "text_delta", "text": event.text})
        if isinstance(event, ReasoningDelta):
            if not event.text:
                return []
            return self._delta_in("thinking", {"type": "thinking", "thinking": "", "signature": ""},
                                  {"type": "thinking_delta", "thinking": event.text})
        if isinstance(event, ToolCallStart):
            events = self._open("tool_use", {"type": "tool_use", "id": tool_use_id(event.id), "name": event.name,
                                             "input": {}})
            self.tool_blocks[event.index] = self.blocks - 1
            return events
        if isinstance(event, ToolCallArgs):
            if not event.fragment:
                return []
            index = self.tool_blocks.get(event.index, self.blocks - 1)
            return [_delta(index, {"type": "input_json_delta", "partial_json": event.fragment})]
        if isinstance(event, ToolCallDropped):  # its block ends where it was cut; stop_reason says why
            return self._close() if self.tool_blocks.get(event.index) == self.blocks - 1 else []
        if isinstance(event, ChoiceEnd):
            self.stop_reason = STOP_REASONS[event.reason]
            self.stop_sequence = event.stop_sequence
            return self._close()
        if isinstance(event, Usage):
            delta = {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence}
            return [("message_delta", {"type": "message_delta", "delta": delta, "usage": usage_dict(event)}),
                    ("message_stop", {"type": "message_stop"})]
        raise TypeError(f"no Anthropic stream event for {event!r}")


def _delta(index: int, delta: dict[str, Any]) -> StreamEvent:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}


def accumulate(message: dict[str, Any] | None, name: str, data: dict[str, Any]) -> dict[str, Any]:
    """The message after one stream event, as a client builds it (tool input JSON kept as text until the end)."""
    if name == "message_start":
        return {**data["message"], "content": []}
    assert message is not None, "message_start comes first"
    if name == "content_block_start":
        message["content"].append(dict(data["content_block"]))
    elif name == "content_block_delta":
        block, delta = message["content"][data["index"]], data["delta"]
        if delta["type"] == "text_delta":
            block["text"] += delta["text"]
        elif delta["type"] == "thinking_delta":
            block["thinking"] += delta["thinking"]
        elif delta["type"] == "signature_delta":
            block["signature"] = delta["signature"]
        elif delta["type"] == "input_json_delta":
            block["_json"] = block.get("_json", "") + delta["partial_json"]
    elif name == "message_delta":
        message.update(data["delta"])
        message["usage"] = {**message["usage"], **data["usage"]}
    return message


def fold_message(header: MessageHeader, events: Iterable[Event]) -> dict[str, Any]:
    """The non-streamed `message` of a whole event stream (less dropped calls): the fold of its stream events;
    a failure raises."""
    encoder = MessageEncoder(header)
    message: dict[str, Any] | None = None
    for name, data in encoder.opening():
        message = accumulate(message, name, data)
    for event in without_dropped_calls(events):
        if isinstance(event, StreamFailed):
            raise event.error
        for name, data in encoder.encode(event):
            message = accumulate(message, name, data)
    assert message is not None
    for block in message["content"]:
        if block["type"] == "tool_use":
            block["input"] = json.loads(block.pop("_json", "") or "{}")
    return message
