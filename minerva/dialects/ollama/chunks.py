"""Ollama's response objects: core events → the NDJSON objects of /api/chat and /api/generate, and the fold of
those objects into the whole `stream: false` body (one path for both)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from minerva.core.events import (
    ChoiceEnd,
    Event,
    FinishReason,
    Logprobs,
    ReasoningDelta,
    StreamFailed,
    TextDelta,
    TokenEvent,
    TokenLogprob,
    ToolCallArgs,
    ToolCallDropped,
    ToolCallStart,
    Usage,
)
from minerva.dialects.ollama.timing import Timings

logger = logging.getLogger(__name__)

DONE_REASONS: dict[FinishReason, str] = {"end": "stop", "stop_sequence": "stop", "tool_calls": "stop",
                                         "length": "length"}
"""Ollama's done_reason for each way a choice ends (a turn that ends in tool calls is "stop" there too)."""

Shape = Literal["chat", "generate"]


def created_at() -> str:
    """Now, in UTC, as Ollama writes `created_at` (RFC 3339 with fractional seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _token(token: TokenEvent | TokenLogprob) -> dict[str, Any]:
    return {"token": token.piece.decode("utf-8", errors="replace"), "logprob": token.logprob,
            "bytes": list(token.piece)}


def logprob_entries(tokens: Logprobs) -> list[dict[str, Any]]:
    """Ollama's `logprobs` entries of these tokens, each with its alternatives."""
    return [{**_token(token), "top_logprobs": [_token(alt) for alt in token.top_logprobs]} for token in tokens]


@dataclass
class _PendingCall:
    """A tool call whose arguments are still arriving (Ollama sends each call whole)."""

    id: str
    index: int
    name: str
    arguments: str = ""
    logprobs: list[TokenEvent] = field(default_factory=list)


class ChunkEncoder:
    """Writes one response's events as Ollama objects: `message` chunks (/api/chat) or `response` chunks
    (/api/generate); a tool call goes out whole once its arguments are complete, a dropped one never."""

    def __init__(self, model_name: str, timings: Timings, shape: Shape):
        self.model_name = model_name
        self.timings = timings
        self.shape = shape
        self._pending: _PendingCall | None = None
        self._calls = 0
        self._done_reason = "stop"

    def _object(self, content: str = "", thinking: str | None = None, tool_calls: list[dict] | None = None,
                logprobs: Logprobs = ()) -> dict[str, Any]:
        head: dict[str, Any] = {"model": self.model_name, "created_at": created_at()}
        if self.shape == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking is not None:
                message["thinking"] = thinking
            if tool_calls:
                message["tool_calls"] = tool_calls
            head["message"] = message
        else:
            head["response"] = content
            if thinking is not None:
                head["thinking"] = thinking
        head["done"] = False
        if logprobs:
            head["logprobs"] = logprob_entries(logprobs)
        return head

    def _flush_call(self) -> list[dict[str, Any]]:
        pending, self._pending = self._pending, None
        if pending is None:
            return []
        try:
            arguments = json.loads(pending.arguments or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            logger.info("ollama: tool call %s has arguments that are not a JSON object; left out", pending.name)
            return []
        call = {"id": pending.id, "function": {"index": self._calls, "name": pending.name, "arguments": arguments}}
        self._calls += 1
        return [self._object(tool_calls=[call], logprobs=tuple(pending.logprobs))]

    def encode(self, event: Event) -> list[dict[str, Any]]:
        """The objects of one core event (none while a tool call is still arriving)."""
        if isinstance(event, TextDelta):
            return [self._object(event.text, logprobs=event.logprobs)] if event.text or event.logprobs else []
        if isinstance(event, ReasoningDelta):
            return [self._object(thinking=event.text, logprobs=event.logprobs)] if event.text or event.logprobs \
                else []
        if isinstance(event, ToolCallStart):
            sent = self._flush_call()
            self._pending = _PendingCall(event.id, event.index, event.name, logprobs=list(event.logprobs))
            return sent
        if isinstance(event, ToolCallArgs):
            if self._pending is not None and self._pending.index == event.index:
                self._pending.arguments += event.fragment
                self._pending.logprobs += event.logprobs
            return []
        if isinstance(event, ToolCallDropped):
            if self._pending is not None and self._pending.index == event.index:
                self._pending = None
            return []
        if isinstance(event, ChoiceEnd):
            self._done_reason = DONE_REASONS[event.reason]
            return self._flush_call()
        if isinstance(event, Usage):
            return [self.final(event)]
        raise TypeError(f"no Ollama object for {event!r}")

    def final(self, usage: Usage) -> dict[str, Any]:
        """The last object: done, why, and what the request cost (counts in tokens, durations in ns)."""
        last = self._object()
        durations = self.timings.durations()
        last.update(done=True, done_reason=self._done_reason, total_duration=durations["total_duration"],
                    load_duration=durations["load_duration"], prompt_eval_count=usage.prompt_tokens,
                    prompt_eval_duration=durations["prompt_eval_duration"], eval_count=usage.completion_tokens,
                    eval_duration=durations["eval_duration"])
        return last


def fold_objects(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole body of a response from its stream objects: the texts joined, the calls and logprobs gathered,
    everything else from the last (done) object."""
    whole = dict(objects[-1])
    thinking = "".join((o["message"] if "message" in o else o).get("thinking") or "" for o in objects)
    if "message" in whole:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(o["message"]["content"] for o in objects)}
        if thinking:
            message["thinking"] = thinking
        calls = [call for o in objects for call in o["message"].get("tool_calls", ())]
        if calls:
            message["tool_calls"] = calls
        whole["message"] = message
    else:
        whole["response"] = "".join(o["response"] for o in objects)
        if thinking:
            whole["thinking"] = thinking
    logprobs = [entry for o in objects for entry in o.get("logprobs", ())]
    if logprobs:
        whole["logprobs"] = logprobs
    return whole


def fold_body(encoder: ChunkEncoder, events: Iterable[Event]) -> dict[str, Any]:
    """The `stream: false` body of a whole event stream: the fold of its stream objects; a failure raises."""
    objects: list[dict[str, Any]] = []
    for event in events:
        if isinstance(event, StreamFailed):
            raise event.error
        objects += encoder.encode(event)
    if not objects or not objects[-1]["done"]:
        raise RuntimeError("a generation ended without its usage")
    return fold_objects(objects)
