"""gpt-oss "harmony" output: channels over text markers, read as the model writes them.

    <|channel|>analysis<|message|>…<|end|>                        → reasoning
    <|start|>assistant<|channel|>final<|message|>…<|return|>       → content
    <|start|>assistant<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{…}
    <|call|>                                                       → tool call NAME
    (the recipient may also stand before the channel: ``assistant to=functions.NAME<|channel|>…``)

A call's body is its arguments: once it opens with ``{`` the call starts and the object's text
streams; a body that is not an object (a JSON string) is decided whole at the end of its message.

openai-harmony's StreamableParser would do this over token ids, but it loads the o200k vocabulary
from the network on first use (it cannot run offline here) and works on tokens, while engines hand
us text; these markers are the text of the harmony special tokens.
"""

from __future__ import annotations

import json
import logging
import re
from enum import Enum

from minerva.core.events import ReasoningDelta, TextDelta, ToolCallArgs, ToolCallDropped
from minerva.parsers.base import (
    IdFactory,
    IncrementalParser,
    find_first_marker,
    new_call_id,
    partial_marker_length,
)
from minerva.parsers.call_stream import CallStream, HeadFinder
from minerva.parsers.json_scan import CallHead, FoundCall, decode_arguments, is_json_object

logger = logging.getLogger(__name__)

MESSAGE = "<|message|>"
END_MARKERS = ("<|end|>", "<|return|>", "<|call|>", "<|start|>")
HEADER_OPENINGS = ("<|start|>", "<|channel|>", "assistant", "to=", "<|constrain|>")
MAX_HEADER_CHARS = 256
FUNCTION_PREFIX = "functions."

_CHANNEL = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")


class _State(Enum):
    HEADER = "header"
    MESSAGE = "message"


def parse_header(header: str) -> tuple[str, str | None]:
    """The channel (``final`` when absent) and recipient (None when absent) of a message header."""
    channel = _CHANNEL.search(header)
    recipient = _RECIPIENT.search(header)
    return (channel.group(1) if channel else "final", recipient.group(1) if recipient else None)


def could_be_header(text: str) -> bool:
    """Whether ``text`` can still grow into a harmony message header."""
    stripped = text.lstrip()
    if len(stripped) > MAX_HEADER_CHARS:
        return False
    return not stripped or any(
        stripped.startswith(opening) or opening.startswith(stripped) for opening in HEADER_OPENINGS
    )


def function_name(recipient: str) -> str:
    """The function a message's recipient names (``functions.NAME`` → ``NAME``)."""
    return recipient[len(FUNCTION_PREFIX) :] if recipient.startswith(FUNCTION_PREFIX) else recipient


def arguments_head(name: str) -> HeadFinder:
    """A call's head in a message to function ``name``: its body's opening brace."""

    def find(text: str, at: int) -> CallHead | None:
        body = text.lstrip()
        if not name or not body.startswith("{"):
            return None
        return CallHead(name, len(text) - len(body))

    return find


def parse_harmony_call(recipient: str, body: str) -> FoundCall | None:
    """The call a commentary message to ``recipient`` makes, or None if its body is not JSON."""
    name = function_name(recipient)
    try:
        arguments = decode_arguments(json.loads(body))
    except ValueError:
        return None
    if not name or arguments is None:
        return None
    return FoundCall(name=name, arguments=arguments)


class HarmonyParser(IncrementalParser):
    """Streams harmony: analysis → reasoning, final/commentary → content, to=… → calls."""

    def __init__(
        self,
        *,
        starts_in_reasoning: bool = False,
        id_factory: IdFactory = new_call_id,
        **_: object,  # e.g. reasoning=: harmony marks reasoning by channel, not tags
    ):
        super().__init__(id_factory=id_factory)
        self._state = _State.MESSAGE if starts_in_reasoning else _State.HEADER
        self._channel = "analysis" if starts_in_reasoning else "final"
        self._recipient: str | None = None
        self._call: CallStream | None = None  # the call of a message to a function, once it streams
        self._call_index = -1
        self._searched = 0  # how far a call's body was searched for its end marker

    def _finish_held(self) -> None:
        if self._state is _State.MESSAGE:
            self._end_message(self._buffer)
        self._buffer = ""  # a dangling header (e.g. a last "<|start|>assistant") says nothing

    def _run(self, final: bool) -> None:
        progressing = True
        while progressing:
            if self._state is _State.HEADER:
                progressing = self._step_header(final)
            else:
                progressing = self._step_message(final)

    def _step_header(self, final: bool) -> bool:
        position = self._buffer.find(MESSAGE)
        if position >= 0:
            header = self._buffer[:position]
            self._buffer = self._buffer[position + len(MESSAGE) :]
            self._channel, self._recipient = parse_header(header)
            self._state = _State.MESSAGE
            if self._recipient is not None:
                self._call = CallStream(arguments_head(function_name(self._recipient)))
                self._searched = 0
            return True
        if not could_be_header(self._buffer):
            # no harmony framing: the model is talking plainly; treat it as the final answer
            self._channel, self._recipient = "final", None
            self._state = _State.MESSAGE
            return True
        return False

    def _step_message(self, final: bool) -> bool:
        found = find_first_marker(self._buffer, END_MARKERS, self._searched if self._recipient else 0)
        if self._recipient is not None:
            held = 0 if final else partial_marker_length(self._buffer, END_MARKERS)
            self._stream_call(found[0] if found else len(self._buffer) - held)
            self._searched = max(0, len(self._buffer) - max(map(len, END_MARKERS)) + 1)
        if found is not None:
            position, marker = found
            self._end_message(self._buffer[:position])
            self._buffer = self._buffer[position + (0 if marker == "<|start|>" else len(marker)) :]
            self._state = _State.HEADER
            return True
        if self._recipient is not None or final:
            return False  # the rest of a call's body is decided at its end; finish() flushes the rest
        held = partial_marker_length(self._buffer, END_MARKERS)
        self._emit_text(self._buffer[: len(self._buffer) - held])
        self._buffer = self._buffer[len(self._buffer) - held :]
        return False

    def _emit_text(self, text: str) -> None:
        if text:
            analysis = self._channel == "analysis"
            self._out.append(ReasoningDelta(text) if analysis else TextDelta(text))

    def _stream_call(self, end: int) -> None:
        """Start the call once its body opens an object, and hand on its arguments' text up to ``end``."""
        call = self._call
        if call is None:
            return
        if not call.in_arguments:
            if call.streamed:
                return  # the arguments closed; what is left before the end marker is no argument text
            name = call.head(self._buffer[:end])
            if name is None:
                return
            self._call_index = self._start_call(name)
        fragment, arguments = call.arguments(self._buffer, end)
        if fragment:
            self._out.append(ToolCallArgs(self._call_index, fragment))
        if arguments is not None and not is_json_object(arguments):
            logger.debug("harmony call to %s: arguments not a JSON object; the call is dropped", self._recipient)
            self._out.append(ToolCallDropped(self._call_index))

    def _end_message(self, text: str) -> None:
        if self._recipient is None:
            self._emit_text(text)
            return
        streamed, self._call = self._call, None
        if streamed is not None and streamed.streamed:
            if streamed.in_arguments:
                logger.debug("harmony call to %s ended inside its arguments; the call is dropped", self._recipient)
                self._out.append(ToolCallDropped(self._call_index))
            self._recipient = None
            return
        call = parse_harmony_call(self._recipient, text.strip())
        if call is None:
            logger.debug("harmony call to %s did not parse; returned as content", self._recipient)
            self._out.append(TextDelta(text))
        else:
            self._emit_whole_calls([call])
        self._recipient = None


PARSER = HarmonyParser
