"""What every output parser shares: call ids, the fold of deltas, marker hold-back, the base class.

A parser is created per response. ``feed(text)`` takes the next piece of generated text and
returns what is decided so far; ``finish()`` flushes the rest at end of generation. Text that could
still turn into a marker is held back until it is decided, and no longer.

A tool call streams once its head is certain (for JSON calls: its ``"name"`` is complete and its
``"arguments"`` object has opened): ``ToolCallStart``, then ``ToolCallArgs`` fragments of the
arguments object's text exactly as generated, up to its closing brace, so that the fragments
concatenate to the JSON object the model wrote. A call whose arguments never complete (generation
ended inside them) or are not a JSON object after all is taken back by a ``ToolCallDropped``; a
whole response leaves it out. A call that cannot stream (its arguments before its name, or given as
a JSON string) is emitted whole once its region ends: ``ToolCallStart`` then one ``ToolCallArgs``
holding the ``json.dumps`` of its arguments; until a region commits to a call it may still come
back as plain content. Parsers yield the core events (minerva.core.events) of choice 0.
"""

from __future__ import annotations

import json
import secrets
import string
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from minerva.core.events import ParsedDelta, ReasoningDelta, TextDelta, ToolCallArgs, ToolCallStart, \
    without_dropped_calls
from minerva.parsers.json_scan import FoundCall

CALL_ID_ALPHABET = string.ascii_letters + string.digits
CALL_ID_LENGTH = 24


def new_call_id() -> str:
    """A fresh OpenAI-style tool call id: ``call_`` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(CALL_ID_ALPHABET) for _ in range(CALL_ID_LENGTH))


IdFactory = Callable[[], str]

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


def collect_deltas(deltas: Iterable[ParsedDelta]) -> ParsedMessage:
    """Fold a stream of deltas into the message a non-streaming response returns (dropped calls left out)."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, list] = {}
    for delta in without_dropped_calls(deltas):
        if isinstance(delta, TextDelta):
            content.append(delta.text)
        elif isinstance(delta, ReasoningDelta):
            reasoning.append(delta.text)
        elif isinstance(delta, ToolCallStart):
            calls[delta.index] = [delta.id, delta.name, []]
        elif isinstance(delta, ToolCallArgs):
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
        if isinstance(delta, TextDelta | ReasoningDelta):
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


class IncrementalParser(ABC):
    """A per-response parser: feed generated text, get deltas; finish at end of generation.

    Subclasses implement ``_run(final)``, which consumes ``self._buffer`` into ``self._out``, and
    may extend ``_finish_held()`` to flush what only the end of generation decides.
    """

    def __init__(self, *, id_factory: IdFactory = new_call_id):
        self._id_factory = id_factory
        self._next_index = 0
        self._buffer = ""
        self._out: list[ParsedDelta] = []

    def feed(self, text: str) -> list[ParsedDelta]:
        """Take the next piece of generated text; return the deltas decided by it."""
        self._buffer += text
        self._run(final=False)
        return self._take()

    def finish(self) -> list[ParsedDelta]:
        """End of generation: return everything still held back."""
        self._run(final=True)
        self._finish_held()
        return self._take()

    @abstractmethod
    def _run(self, final: bool) -> None:
        """Turn as much of the buffer into deltas as is decided (all of it when final)."""

    def _finish_held(self) -> None:
        """Flush state only the end of generation decides (after the final run)."""

    def _take(self) -> list[ParsedDelta]:
        out, self._out = merge_deltas(self._out), []
        return out

    def parse_complete(self, text: str) -> ParsedMessage:
        """Parse a whole response at once (the same code path as streaming)."""
        return collect_deltas(self.feed(text) + self.finish())

    def _start_call(self, name: str) -> int:
        """Emit the start of the next tool call; its index."""
        index = self._next_index
        self._next_index += 1
        self._out.append(ToolCallStart(index=index, id=self._id_factory(), name=name))
        return index

    def _emit_whole_calls(self, calls: list[FoundCall]) -> None:
        """Emit calls parsed whole: each start, then its arguments in one fragment."""
        for call in calls:
            index = self._start_call(call.name)
            self._out.append(ToolCallArgs(index=index, fragment=json.dumps(call.arguments, ensure_ascii=False)))


class PassthroughParser(IncrementalParser):
    """All generated text is content (no tools, no reasoning markers)."""

    def feed(self, text: str) -> list[ParsedDelta]:
        """Content as it comes."""
        return [TextDelta(text)] if text else []

    def finish(self) -> list[ParsedDelta]:
        """Nothing is ever held back."""
        return []

    def _run(self, final: bool) -> None:
        """Never called: feed passes text straight through."""
