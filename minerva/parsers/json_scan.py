"""Tool calls written as JSON: argument decoding, call objects, and where a JSON value ends."""

from __future__ import annotations

import json
from dataclasses import dataclass

# keys a tool call object may carry; anything else means the JSON is not a call
CALL_OBJECT_KEYS = frozenset({"name", "arguments", "parameters", "id", "type"})


@dataclass(frozen=True)
class FoundCall:
    """A tool call recognised by a family's pure parse: name and decoded arguments."""

    name: str
    arguments: dict


def decode_arguments(value: object) -> dict | None:
    """Arguments as a dict: an object, a JSON string of an object, or missing (empty)."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def call_from_object(
    obj: object, argument_keys: tuple[str, ...] = ("arguments", "parameters")
) -> FoundCall | None:
    """A call from ``{"name": ..., "arguments": {...}}`` (or ``parameters``), else None."""
    if not isinstance(obj, dict) or not set(obj) <= CALL_OBJECT_KEYS:
        return None
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    present = [key for key in argument_keys if key in obj]
    arguments = decode_arguments(obj[present[0]] if present else None)
    if arguments is None:
        return None
    return FoundCall(name=name.strip(), arguments=arguments)


def calls_from_json(text: str) -> list[FoundCall] | None:
    """Calls from a JSON call object or a non-empty array of them; None for anything else."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = [call_from_object(item) for item in items]
    if not calls or any(call is None for call in calls):
        return None
    return calls  # type: ignore[return-value]


class JsonValueScanner:
    """Finds, incrementally, where the first JSON object or array in a text ends."""

    def __init__(self, max_lead: int = 200, lead_markers: tuple[str, ...] = ()):
        self._lead_markers = lead_markers  # bracketed markers allowed before the value
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._started = False
        self._seen = 0
        self._max_lead = max_lead
        self.failed = False

    @property
    def started(self) -> bool:
        """Whether a JSON value has begun (so an unfinished one is a cut value, not plain text)."""
        return self._started

    def scan(self, text: str) -> int | None:
        """Scan the new end of ``text`` (the whole text so far); the end index once complete."""
        index = self._seen
        while index < len(text):
            char = text[index]
            index += 1
            if not self._started:
                if char == "[" and self._lead_markers:
                    rest = text[index - 1 :]
                    marker = next((m for m in self._lead_markers if rest.startswith(m)), None)
                    if marker is not None:
                        index += len(marker) - 1
                        continue
                    if any(m.startswith(rest) for m in self._lead_markers):
                        self._seen = index - 1
                        return None  # wait: this may be the start of a lead marker
                if char in "{[":
                    self._started = True
                    self._depth = 1
                elif index > self._max_lead:
                    self.failed = True
                    self._seen = len(text)
                    return None
                continue
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._seen = index
                    return index
        self._seen = len(text)
        return None
