"""Streaming machinery shared by every output parser: deltas, marker hold-back, the markup machine.

A parser is created per response. ``feed(text)`` takes the next piece of generated text and
returns what is decided so far; ``finish()`` flushes the rest at end of generation. Text that could
still turn into a marker is held back until it is decided, and no longer. A tool call is emitted
only once it is complete and valid (``ToolCallStart`` then one ``ToolCallArguments`` holding the
``json.dumps`` of its arguments), so a malformed call can still come back as plain content.
"""

from __future__ import annotations

import json
import logging
import secrets
import string
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

logger = logging.getLogger(__name__)

CALL_ID_ALPHABET = string.ascii_letters + string.digits
CALL_ID_LENGTH = 24


def new_call_id() -> str:
    """A fresh OpenAI-style tool call id: ``call_`` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(CALL_ID_ALPHABET) for _ in range(CALL_ID_LENGTH))


IdFactory = Callable[[], str]

# keys a tool call object may carry; anything else means the JSON is not a call
CALL_OBJECT_KEYS = frozenset({"name", "arguments", "parameters", "id", "type"})


@dataclass(frozen=True)
class ContentDelta:
    """Visible answer text."""

    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """Reasoning ("thinking") text, sent to clients as ``reasoning_content``."""

    text: str


@dataclass(frozen=True)
class ToolCallStart:
    """The first delta of a tool call: its index in this response, id and function name."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArguments:
    """A piece of a tool call's arguments; the pieces of one call concatenate to a JSON object."""

    index: int
    fragment: str


ParsedDelta = ContentDelta | ReasoningDelta | ToolCallStart | ToolCallArguments


@dataclass(frozen=True)
class ParsedToolCall:
    """A complete tool call: id, function name and arguments as a JSON string."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ParsedMessage:
    """A whole response split into content, reasoning and tool calls (None when empty)."""

    content: str | None
    reasoning: str | None
    tool_calls: tuple[ParsedToolCall, ...] = ()


@dataclass(frozen=True)
class FoundCall:
    """A tool call recognised by a family's pure parse: name and decoded arguments."""

    name: str
    arguments: dict


def collect_deltas(deltas: Iterable[ParsedDelta]) -> ParsedMessage:
    """Fold a stream of deltas into the message a non-streaming response returns."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, list] = {}
    for delta in deltas:
        if isinstance(delta, ContentDelta):
            content.append(delta.text)
        elif isinstance(delta, ReasoningDelta):
            reasoning.append(delta.text)
        elif isinstance(delta, ToolCallStart):
            calls[delta.index] = [delta.id, delta.name, []]
        elif isinstance(delta, ToolCallArguments):
            calls[delta.index][2].append(delta.fragment)
    tool_calls = tuple(
        ParsedToolCall(id=call_id, name=name, arguments="".join(parts))
        for call_id, name, parts in (calls[index] for index in sorted(calls))
    )
    return ParsedMessage(
        content="".join(content) or None,
        reasoning="".join(reasoning) or None,
        tool_calls=tool_calls,
    )


def merge_deltas(deltas: list[ParsedDelta]) -> list[ParsedDelta]:
    """Join neighbouring text deltas of the same kind and drop empty ones."""
    merged: list[ParsedDelta] = []
    for delta in deltas:
        if isinstance(delta, ContentDelta | ReasoningDelta):
            if not delta.text:
                continue
            if merged and type(merged[-1]) is type(delta):
                merged[-1] = type(delta)(merged[-1].text + delta.text)
                continue
        merged.append(delta)
    return merged


def partial_marker_length(text: str, markers: Iterable[str]) -> int:
    """Length of the longest end of ``text`` that is a proper beginning of one of ``markers``."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


def find_first_marker(text: str, markers: Iterable[str], start: int = 0) -> tuple[int, str] | None:
    """Position and identity of the earliest marker in ``text`` (the longest one on a tie)."""
    best: tuple[int, str] | None = None
    for marker in markers:
        position = text.find(marker, start)
        if position < 0:
            continue
        longer = best is not None and position == best[0] and len(marker) > len(best[1])
        if best is None or position < best[0] or longer:
            best = (position, marker)
    return best


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


@dataclass(frozen=True)
class ReasoningMarkers:
    """The tags around reasoning text, e.g. ``<think>`` and ``</think>``."""

    open: str
    close: str


@dataclass(frozen=True)
class ToolMarker:
    """A tool-call region: opening and closing marker (close None: ends with its JSON value)."""

    open: str
    close: str | None


@dataclass(frozen=True)
class ToolSyntax:
    """How one model family writes tool calls, and the pure parse of one call region."""

    markers: tuple[ToolMarker, ...]
    parse_region: Callable[[str, ToolMarker | None], list[FoundCall] | None]
    bare_json: bool = False  # a JSON value where an answer starts may be a call (no marker)
    lead_markers: tuple[str, ...] = ()  # bracketed markers that may precede a region's JSON
    separators: str = ""  # characters dropped between consecutive calls, e.g. ";"


class IncrementalParser(ABC):
    """A per-response parser: feed generated text, get deltas; finish at end of generation."""

    def __init__(self, *, id_factory: IdFactory = new_call_id):
        self._id_factory = id_factory
        self._next_index = 0

    @abstractmethod
    def feed(self, text: str) -> list[ParsedDelta]:
        """Take the next piece of generated text; return the deltas decided by it."""

    @abstractmethod
    def finish(self) -> list[ParsedDelta]:
        """End of generation: return everything still held back."""

    def parse_complete(self, text: str) -> ParsedMessage:
        """Parse a whole response at once (the same code path as streaming)."""
        return collect_deltas(self.feed(text) + self.finish())

    def _emit_calls(self, calls: list[FoundCall]) -> list[ParsedDelta]:
        deltas: list[ParsedDelta] = []
        for call in calls:
            index = self._next_index
            self._next_index += 1
            deltas.append(ToolCallStart(index=index, id=self._id_factory(), name=call.name))
            arguments = json.dumps(call.arguments, ensure_ascii=False)
            deltas.append(ToolCallArguments(index=index, fragment=arguments))
        return deltas


class _Mode(Enum):
    CONTENT = "content"
    REASONING = "reasoning"
    TOOL = "tool"


class MarkupParser(IncrementalParser):
    """The streaming machine for tag-style formats: content, reasoning tags and tool-call regions.

    Whitespace is held until the next visible character decides it: the whitespace after a call or
    after reasoning is dropped, the whitespace before a call is kept only if content follows the
    call, and leading whitespace before the first call or reasoning is dropped.
    """

    tool_syntax: ToolSyntax | None = None
    default_reasoning: ReasoningMarkers | None = None

    def __init__(
        self,
        *,
        reasoning: ReasoningMarkers | None | bool = True,
        starts_in_reasoning: bool = False,
        id_factory: IdFactory = new_call_id,
    ):
        super().__init__(id_factory=id_factory)
        if reasoning is True:
            reasoning = self.default_reasoning
        self._reasoning = reasoning or None
        self._mode = _Mode.REASONING if (starts_in_reasoning and self._reasoning) else _Mode.CONTENT
        self._buffer = ""
        self._pending_space = ""
        self._segment_start = True  # nothing visible since the start, a call or reasoning
        self._shown_content = False  # any visible content emitted yet
        self._after_call = False
        self._region: ToolMarker | None = None
        self._region_scanner: JsonValueScanner | None = None
        self._searched = 0  # how far the buffer was searched for a closing marker
        self._out: list[ParsedDelta] = []

    # -- public API --------------------------------------------------------------------------

    def feed(self, text: str) -> list[ParsedDelta]:
        """Take the next piece of generated text; return the deltas decided by it."""
        self._buffer += text
        self._run(final=False)
        return self._take()

    def finish(self) -> list[ParsedDelta]:
        """End of generation: return everything still held back."""
        self._run(final=True)
        if self._pending_space and not self._after_call:
            self._out.append(ContentDelta(self._pending_space))
        self._pending_space = ""
        return self._take()

    # -- machinery ---------------------------------------------------------------------------

    def _take(self) -> list[ParsedDelta]:
        out, self._out = merge_deltas(self._out), []
        return out

    def _open_markers(self) -> list[str]:
        markers = [marker.open for marker in self.tool_syntax.markers] if self.tool_syntax else []
        if self._reasoning:
            markers.append(self._reasoning.open)
        return markers

    def _content(self, text: str) -> None:
        """Emit content, holding trailing whitespace until the next visible text decides it."""
        if not text:
            return
        stripped = text.rstrip()
        if self._after_call:
            stripped = stripped.lstrip()
        if not stripped:
            if not self._after_call:
                self._pending_space += text
            return
        self._after_call = False
        self._out.append(ContentDelta(self._pending_space + stripped))
        self._pending_space = text[len(text.rstrip()) :]
        self._segment_start = False
        self._shown_content = True

    def _run(self, final: bool) -> None:
        progressing = True
        while progressing:
            if self._mode is _Mode.CONTENT:
                progressing = self._step_content(final)
            elif self._mode is _Mode.REASONING:
                progressing = self._step_reasoning(final)
            else:
                progressing = self._step_tool(final)

    def _step_content(self, final: bool) -> bool:
        syntax = self.tool_syntax
        if self._after_call and syntax and syntax.separators:
            trimmed = self._buffer.lstrip(" \t\r\n" + syntax.separators)
            if len(trimmed) != len(self._buffer):
                self._buffer = trimmed
        if syntax and syntax.bare_json and self._segment_start:
            stripped = self._buffer.lstrip()
            if not stripped:
                self._content(self._buffer)
                self._buffer = ""
                return False
            if stripped[0] in "{[":
                self._content(self._buffer[: len(self._buffer) - len(stripped)])
                self._buffer = stripped
                self._enter_tool(None)
                return True
        markers = self._open_markers()
        found = find_first_marker(self._buffer, markers)
        if found is not None:
            position, marker = found
            self._content(self._buffer[:position])
            self._buffer = self._buffer[position + len(marker) :]
            if self._reasoning and marker == self._reasoning.open:
                self._mode = _Mode.REASONING
                self._searched = 0
            else:
                assert syntax is not None
                self._enter_tool(next(m for m in syntax.markers if m.open == marker))
            return True
        held = 0 if final else partial_marker_length(self._buffer, markers)
        self._content(self._buffer[: len(self._buffer) - held])
        self._buffer = self._buffer[len(self._buffer) - held :]
        return False

    def _step_reasoning(self, final: bool) -> bool:
        assert self._reasoning is not None
        close = self._reasoning.close
        position = self._buffer.find(close)
        if position >= 0:
            self._out.append(ReasoningDelta(self._buffer[:position]))
            self._buffer = self._buffer[position + len(close) :]
            self._mode = _Mode.CONTENT
            if not self._shown_content:
                self._pending_space = ""
            self._segment_start = True
            self._after_call = True  # drop the blank lines models put after reasoning
            return True
        held = 0 if final else partial_marker_length(self._buffer, [close])
        self._out.append(ReasoningDelta(self._buffer[: len(self._buffer) - held]))
        self._buffer = self._buffer[len(self._buffer) - held :]
        return False

    def _enter_tool(self, marker: ToolMarker | None) -> None:
        self._mode = _Mode.TOOL
        self._region = marker
        self._searched = 0
        lead = self.tool_syntax.lead_markers if self.tool_syntax else ()
        json_ended = marker is None or marker.close is None
        self._region_scanner = JsonValueScanner(lead_markers=lead) if json_ended else None

    def _step_tool(self, final: bool) -> bool:
        marker = self._region
        if self._region_scanner is None:
            assert marker is not None and marker.close is not None
            position = self._buffer.find(marker.close, self._searched)
            if position < 0:
                self._searched = max(0, len(self._buffer) - len(marker.close) + 1)
                if final:
                    self._reject_region()
                    return True
                return False
            body = self._buffer[:position]
            self._buffer = self._buffer[position + len(marker.close) :]
            self._close_region(body, raw=body + marker.close)
            return True
        end = self._region_scanner.scan(self._buffer)
        if end is None:
            if final or self._region_scanner.failed:
                self._reject_region()
                return True
            return False
        body = self._buffer[:end]
        self._buffer = self._buffer[end:]
        self._close_region(body, raw=body)
        return True

    def _close_region(self, body: str, raw: str) -> None:
        assert self.tool_syntax is not None
        calls = self.tool_syntax.parse_region(body, self._region)
        if not calls:
            logger.debug("tool call region did not parse; returned as content")
            self._mode = _Mode.CONTENT
            opening = self._region.open if self._region else ""
            self._region = None
            self._content(opening + raw)
            return
        if not self._shown_content:
            self._pending_space = ""  # blank lines before the first call are nobody's content
        self._out.extend(self._emit_calls(calls))
        self._mode = _Mode.CONTENT
        self._region = None
        self._segment_start = True
        self._after_call = True

    def _reject_region(self) -> None:
        """A hopeless or unfinished region: its marker becomes content, its text is read again."""
        opening = self._region.open if self._region else ""
        self._mode = _Mode.CONTENT
        self._region = None
        self._region_scanner = None
        self._segment_start = False
        self._content(opening)
