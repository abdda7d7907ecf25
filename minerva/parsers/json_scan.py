"""Tool calls written as JSON: argument decoding, call objects, call heads, and where a JSON value ends."""

from __future__ import annotations

import json
import re
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


def is_json_object(text: str) -> bool:
    """Whether ``text`` is one whole JSON object."""
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


@dataclass(frozen=True)
class CallHead:
    """The certain beginning of a call being written: its name and where its arguments object opens."""

    name: str
    arguments_at: int  # index of the arguments' opening brace
    opens_array: bool = False  # the call is the first element of an array of calls


_WS = r"[ \t\r\n]*"
_STRING = r'"(?:[^"\\]|\\.)*"'
_PAIR = rf'"(?:id|type)"{_WS}:{_WS}{_STRING}{_WS},{_WS}'  # an id or type before the arguments
_HEAD = (rf'\{{{_WS}(?:{_PAIR})*"name"{_WS}:{_WS}(?P<name>{_STRING}){_WS},{_WS}(?:{_PAIR})*'
         rf'"(?:arguments|parameters)"{_WS}:{_WS}(?=\{{)')
_FIRST_HEAD = re.compile(rf"{_WS}(?P<array>\[)?{_WS}{_HEAD}")
_NEXT_HEAD = re.compile(rf'{_WS}(?:,{_WS}"(?:id|type)"{_WS}:{_WS}{_STRING}{_WS})*\}}{_WS},{_WS}{_HEAD}')


def json_call_head(text: str, at: int) -> CallHead | None:
    """The head ``{"name": "...", "arguments": {`` of a call object at ``at``: a region's first call (at 0,
    perhaps opening an array), or the next element of the array after the previous call's arguments."""
    match = (_FIRST_HEAD if at == 0 else _NEXT_HEAD).match(text, at)
    if match is None:
        return None
    try:
        name = json.loads(match.group("name")).strip()
    except ValueError:
        return None
    if not name:
        return None
    return CallHead(name, match.end(), opens_array=at == 0 and match.group("array") is not None)


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

    def __init__(self, max_lead: int = 200, lead_markers: tuple[str, ...] = (), start: int = 0):
        self._lead_markers = lead_markers  # bracketed markers allowed before the value
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._started = False
        self._seen = start  # where the text is read from
        self._max_lead = start + max_lead
        self.failed = False

    @property
    def started(self) -> bool:
        """Whether a JSON value has begun (so an unfinished one is a cut value, not plain text)."""
        return self._started

    def scan(self, text: str, end: int | None = None) -> int | None:
        """Scan the new end of ``text`` (the whole text so far, read up to ``end``); the value's end index once complete."""
        index = self._seen
        stop = len(text) if end is None else end
        while index < stop:
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
                    self._seen = stop
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
        self._seen = stop
        return None
