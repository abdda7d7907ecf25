"""Core events → Responses output items and their stream events; the same writer folds a whole response."""

from __future__ import annotations

import json
import uuid
from typing import Any

from minerva.core.errors import ContextLengthExceededError, MinervaError
from minerva.core.events import (
    ChoiceEnd,
    Event,
    ReasoningDelta,
    TextDelta,
    ToolCallArgs,
    ToolCallDropped,
    ToolCallStart,
    Usage,
)
from minerva.core.requests import Message, ToolCall
from minerva.dialects.openai_responses.convert import encrypt_reasoning
from minerva.dialects.openai_responses.tools import CUSTOM_INPUT, ToolSet


def new_id(prefix: str) -> str:
    """A fresh id in OpenAI's style: prefix, underscore, 32 hex digits."""
    return f"{prefix}_{uuid.uuid4().hex}"


def usage_object(usage: Usage) -> dict:
    """The Responses `usage` of a core Usage."""
    details = {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0}  # no billed cache writes here
    return {"input_tokens": usage.prompt_tokens, "input_tokens_details": details,
            "output_tokens": usage.completion_tokens, "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.total_tokens}


def failure_code(error: MinervaError) -> str:
    """The `error.code` of response.failed: the codes Codex acts on (compact, retry), else OpenAI's generic ones."""
    if isinstance(error, ContextLengthExceededError):
        return "context_length_exceeded"
    if error.status_code == 429:
        return "rate_limit_exceeded"
    return "invalid_prompt" if error.status_code < 500 else "server_error"


def _custom_input(arguments: str) -> str:
    """A custom tool's input from the arguments the model wrote for it ({"input": "..."})."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    if isinstance(value, dict) and isinstance(value.get(CUSTOM_INPUT), str):
        return value[CUSTOM_INPUT]
    return arguments


class _Item:
    """One output item while it streams: its kind, id, text so far and (for calls) the tool."""

    def __init__(self, kind: str, index: int, call: ToolCallStart | None = None, tools: ToolSet | None = None):
        self.kind = kind  # "message", "reasoning", "function_call" or "custom_tool_call"
        self.index = index
        self.id = new_id({"message": "msg", "reasoning": "rs", "function_call": "fc"}.get(kind, "ctc"))
        self.text: list[str] = []
        self.call = call
        self.tool = tools.lookup(call.name) if call is not None and tools is not None else None
        self.dropped = False  # a call taken back: shown in the stream as incomplete, no part of the response

    @property
    def joined(self) -> str:
        return "".join(self.text)

    def part(self) -> dict:
        if self.kind == "message":
            return {"type": "output_text", "text": self.joined, "annotations": [], "logprobs": []}
        return {"type": "reasoning_text", "text": self.joined}

    def body(self, status: str, encrypted: bool, done: bool) -> dict:
        """The item as `output_item.added` (done=False) or `output_item.done` and the final output show it."""
        if self.kind == "message":
            return {"id": self.id, "type": "message", "role": "assistant", "status": status,
                    "content": [self.part()] if done else []}
        if self.kind == "reasoning":
            item: dict[str, Any] = {"id": self.id, "type": "reasoning", "summary": [],
                                    "content": [self.part()] if done else []}
            if encrypted:
                item["encrypted_content"] = encrypt_reasoning(self.joined) if done else None
            return item
        assert self.call is not None and self.tool is not None
        item = {"id": self.id, "type": self.kind, "status": status, "call_id": self.call.id, "name": self.tool.name}
        if self.kind == "custom_tool_call":
            item["input"] = _custom_input(self.joined) if done and not self.dropped else ""
        else:
            item["arguments"] = self.joined if done else ""
        if self.tool.namespace:
            item["namespace"] = self.tool.namespace
        return item


class ResponseWriter:
    """Writes one response's events as Responses stream events, and keeps the response object they build."""

    def __init__(self, response: dict, tools: ToolSet, encrypted_reasoning: bool = False):
        self.response = {**response, "status": "in_progress", "output": [], "usage": None}
        self.tools = tools
        self.encrypted = encrypted_reasoning
        self.sequence = 0
        self.items: list[_Item] = []
        self.open: _Item | None = None
        self.pending_space = ""  # whitespace between items, shown only once real text follows
        self.end: ChoiceEnd | None = None
        self.finished = False

    def _event(self, kind: str, **fields: Any) -> dict:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def _snapshot(self) -> dict:
        return json.loads(json.dumps(self.response))

    def opening(self) -> list[dict]:
        """response.created and response.in_progress."""
        snapshot = self._snapshot()
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]

    def _open(self, kind: str, call: ToolCallStart | None = None) -> list[dict]:
        events = self._close()
        item = _Item(kind, len(self.items), call, self.tools)
        self.items.append(item)
        self.open = item
        events.append(self._event("response.output_item.added", output_index=item.index,
                                  item=item.body("in_progress", self.encrypted, done=False)))
        if kind in ("message", "reasoning"):
            events.append(self._event("response.content_part.added", item_id=item.id, output_index=item.index,
                                      content_index=0, part={**item.part(), "text": ""}))
        return events

    def _close(self, status: str = "completed") -> list[dict]:
        item, self.open = self.open, None
        if item is None:
            return []
        where = {"item_id": item.id, "output_index": item.index}
        events = []
        if item.kind == "message":
            events += [self._event("response.output_text.done", **where, content_index=0, text=item.joined,
                                   logprobs=[]),
                       self._event("response.content_part.done", **where, content_index=0, part=item.part())]
        elif item.kind == "reasoning":
            events += [self._event("response.reasoning_text.done", **where, content_index=0, text=item.joined),
                       self._event("response.content_part.done", **where, content_index=0, part=item.part())]
        elif item.dropped:
            pass  # a call taken back: its arguments never were done
        elif item.kind == "function_call":
            events.append(self._event("response.function_call_arguments.done", **where, name=item.tool.name,
                                      arguments=item.joined))
        else:
            value = _custom_input(item.joined)
            events += [self._event("response.custom_tool_call_input.delta", **where, delta=value),
                       self._event("response.custom_tool_call_input.done", **where, input=value)]
        body = item.body(status, self.encrypted, done=True)
        if not item.dropped:
            self.response["output"].append(body)
        events.append(self._event("response.output_item.done", output_index=item.index, item=body))
        return events

    def _text(self, kind: str, text: str) -> list[dict]:
        events: list[dict] = []
        if self.open is None or self.open.kind != kind:
            if kind == "message" and not text.strip():
                self.pending_space += text
                return []
            events += self._open(kind)
        if kind == "message":
            text = (self.pending_space if len(self.items) == 1 else "") + text  # spacing between items is dropped
            self.pending_space = ""
        item = self.open
        assert item is not None
        item.text.append(text)
        delta_type = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        extra = {"logprobs": []} if kind == "message" else {}
        events.append(self._event(delta_type, item_id=item.id, output_index=item.index, content_index=0,
                                  delta=text, **extra))
        return events

    def encode(self, event: Event) -> list[dict]:
        """The stream events of one core event (choice 0: Responses has one output)."""
        if getattr(event, "choice", 0) != 0:
            return []
        if isinstance(event, TextDelta):
            return self._text("message", event.text) if event.text else []
        if isinstance(event, ReasoningDelta):
            return self._text("reasoning", event.text) if event.text else []
        if isinstance(event, ToolCallStart):
            self.pending_space = ""
            kind = "custom_tool_call" if self.tools.lookup(event.name).custom else "function_call"
            return self._open(kind, event)
        if isinstance(event, ToolCallArgs):
            item = self.open
            if item is None or item.call is None:
                return []
            item.text.append(event.fragment)
            if item.kind != "function_call":
                return []  # a custom tool's input is sent whole once its call is complete
            return [self._event("response.function_call_arguments.delta", item_id=item.id,
                                output_index=item.index, delta=event.fragment)]
        if isinstance(event, ToolCallDropped):
            item = self.open
            if item is None or item.call is None or item.call.index != event.index:
                return []
            item.dropped = True
            return self._close("incomplete")
        if isinstance(event, ChoiceEnd):
            self.end = event
            events = []
            if self.pending_space and not self.items:  # the whole answer was whitespace: still an answer
                events += self._open("message")
                events += self._text("message", "")
            return events + self._close("incomplete" if event.reason == "length" else "completed")
        if isinstance(event, Usage):
            self.response["usage"] = usage_object(event)
            return self.finish()
        raise TypeError(f"no Responses event for {event!r}")

    def finish(self) -> list[dict]:
        """The terminal event: response.completed, or response.incomplete when the token budget ran out."""
        if self.finished:
            return []
        events = self._close()
        self.finished = True
        if self.end is not None and self.end.reason == "length":
            self.response.update(status="incomplete", incomplete_details={"reason": "max_output_tokens"})
            return events + [self._event("response.incomplete", response=self._snapshot())]
        self.response["status"] = "completed"
        return events + [self._event("response.completed", response=self._snapshot())]

    def failed(self, error: MinervaError) -> list[dict]:
        """The terminal response.failed of a stream that broke (or a prompt past the context)."""
        self.finished = True
        self.open = None
        self.response.update(status="failed", error={"code": failure_code(error), "message": error.message})
        return [self._event("response.failed", response=self._snapshot())]

    def assistant_message(self) -> Message:
        """What the model said, as the core message a later turn continues from."""
        calls = tuple(ToolCall(item.call.name, item.joined or "{}", item.call.id)
                      for item in self.items if item.call is not None and not item.dropped)
        text = "".join(item.joined for item in self.items if item.kind == "message")
        reasoning = "".join(item.joined for item in self.items if item.kind == "reasoning") or None
        return Message("assistant", text, calls, reasoning=reasoning)
