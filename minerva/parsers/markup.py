"""The streaming machine for tag-style formats: content, reasoning tags and tool-call regions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from minerva.core.events import ReasoningDelta, TextDelta, ToolCallArgs, ToolCallDropped
from minerva.parsers.base import IdFactory, IncrementalParser, find_first_marker, new_call_id, partial_marker_length
from minerva.parsers.call_stream import CallStream, HeadFinder
from minerva.parsers.json_scan import FoundCall, JsonValueScanner, is_json_object

logger = logging.getLogger(__name__)

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
    call_head: HeadFinder | None = None  # where a call's head is certain, so its arguments can stream


class _Mode(Enum):
    CONTENT = "content"
    REASONING = "reasoning"
    TOOL = "tool"


class MarkupParser(IncrementalParser):
    """The streaming machine for tag-style formats: content, reasoning tags and tool-call regions.

    Whitespace is held until the next visible character decides it: the whitespace after a call or
    after reasoning is dropped, the whitespace before a call is kept only if content follows the
    call, and leading whitespace before the first call or reasoning is dropped. Inside a region,
    calls stream as the syntax's ``call_head`` finds them; the rest of the region is decided whole.
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
        self._pending_space = ""
        self._segment_start = True  # nothing visible since the start, a call or reasoning
        self._shown_content = False  # any visible content emitted yet
        self._after_call = False
        self._region: ToolMarker | None = None
        self._region_scanner: JsonValueScanner | None = None
        self._calls: CallStream | None = None  # the region's streamed calls
        self._call_index = -1  # the index of the call being streamed
        self._searched = 0  # how far the buffer was searched for a closing marker

    def _finish_held(self) -> None:
        if self._pending_space and not self._after_call:
            self._out.append(TextDelta(self._pending_space))
        self._pending_space = ""

    # -- machinery ---------------------------------------------------------------------------

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
        self._out.append(TextDelta(self._pending_space + stripped))
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
        head = self.tool_syntax.call_head if self.tool_syntax else None
        self._calls = CallStream(head) if head else None

    def _streamed(self) -> int:
        return self._calls.streamed if self._calls else 0

    def _stream_calls(self) -> None:
        """Start each call whose head the region's text now completes, and hand on its argument text."""
        calls = self._calls
        if calls is None:
            return
        while True:
            if not calls.in_arguments:
                name = calls.head(self._buffer)
                if name is None:
                    return
                if not self._shown_content:
                    self._pending_space = ""  # blank lines before the first call are nobody's content
                self._call_index = self._start_call(name)
            fragment, arguments = calls.arguments(self._buffer)
            if fragment:
                self._out.append(ToolCallArgs(self._call_index, fragment))
            if arguments is None:
                return
            if not is_json_object(arguments):
                logger.debug("a streamed tool call's arguments are not a JSON object; the call is dropped")
                self._out.append(ToolCallDropped(self._call_index))

    def _step_tool(self, final: bool) -> bool:
        self._stream_calls()
        marker = self._region
        if self._calls is not None and self._calls.in_arguments:  # a region cannot end inside arguments
            if final:
                self._end_unclosed_region(marker.close if marker else None)
                return True
            return False
        if self._region_scanner is None:
            assert marker is not None and marker.close is not None
            start = max(self._searched, self._calls.tail_start if self._calls else 0)
            position = self._buffer.find(marker.close, start)
            if position < 0:
                self._searched = max(0, len(self._buffer) - len(marker.close) + 1)
                if final:
                    self._end_unclosed_region(marker.close)
                    return True
                return False
            body = self._buffer[:position]
            self._buffer = self._buffer[position + len(marker.close) :]
            self._close_region(body)
            return True
        end = self._region_scanner.scan(self._buffer)
        if end is None:
            if final and self._region_scanner.started and (marker is not None or self._streamed()):
                self._end_unclosed_region(None)
                return True
            if final or self._region_scanner.failed:
                self._reject_region()
                return True
            return False
        body = self._buffer[:end]
        self._buffer = self._buffer[end:]
        self._close_region(body)
        return True

    def _close_region(self, body: str) -> None:
        assert self.tool_syntax is not None
        calls = self.tool_syntax.parse_region(body, self._region)
        streamed = self._streamed()
        if streamed:  # a region that streamed calls is one: the rest of it holds only calls or nothing
            self._accept_calls((calls or [])[streamed:])
            return
        if not calls:
            logger.debug("tool call region did not parse; its text (without markers) returned as content")
            self._mode = _Mode.CONTENT
            self._region = None
            self._content(body.strip())
            return
        self._accept_calls(calls)

    def _end_unclosed_region(self, close: str | None) -> None:
        """Generation ended inside a call: one whose arguments are complete is kept, anything else dropped.

        Markup never reaches content: the client sees a call or nothing, and the finish reason says why.
        """
        assert self.tool_syntax is not None
        body = self._buffer
        if close:
            body = body[: len(body) - partial_marker_length(body, [close])]
        self._buffer = ""
        self._region_scanner = None
        calls = self.tool_syntax.parse_region(body, self._region)
        streamed = self._streamed()
        if streamed:
            if self._calls is not None and self._calls.in_arguments:
                logger.debug("generation ended inside a tool call's arguments; the call is dropped")
                self._out.append(ToolCallDropped(self._call_index))
            self._accept_calls((calls or [])[streamed:])
            return
        if calls:
            self._accept_calls(calls)
            return
        logger.debug("generation ended inside an incomplete tool call; the call is dropped")
        self._mode = _Mode.CONTENT
        self._region = None
        self._pending_space = ""  # the blank line before a dropped call belongs to it

    def _accept_calls(self, calls: list[FoundCall]) -> None:
        if not self._shown_content:
            self._pending_space = ""  # blank lines before the first call are nobody's content
        self._emit_whole_calls(calls)
        self._mode = _Mode.CONTENT
        self._region = None
        self._calls = None
        self._segment_start = True
        self._after_call = True

    def _reject_region(self) -> None:
        """A region that is not a call after all: its marker is dropped, its text is read again as content."""
        self._mode = _Mode.CONTENT
        self._region = None
        self._region_scanner = None
        self._calls = None
        self._segment_start = False
