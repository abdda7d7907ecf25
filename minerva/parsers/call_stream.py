"""A tool-call region's calls streamed as they are written: each one commits once its head is certain,
then the text of its arguments object is handed on as it is scanned, up to its closing brace and never past."""

from __future__ import annotations

from collections.abc import Callable

from minerva.parsers.json_scan import CallHead, JsonValueScanner

HeadFinder = Callable[[str, int], CallHead | None]
"""A family's call head at a position of a region's text (0: the region's first call; else just after the
previous call's arguments), or None while there is none there (yet)."""

MAX_HEAD_CHARS = 512  # a head not found within this much text is none: the region is decided whole


class CallStream:
    """The streamed calls of one region: heads found, then each call's argument text as it arrives."""

    def __init__(self, find_head: HeadFinder):
        self._find_head = find_head
        self._next_at = 0  # where the next call's head may begin
        self._arguments: JsonValueScanner | None = None
        self._arguments_at = 0
        self._handed = 0  # the end of the argument text handed on so far
        self._in_array = False
        self._no_more = False
        self.streamed = 0  # calls of this region committed so far

    @property
    def in_arguments(self) -> bool:
        """Whether a committed call's arguments are still being written."""
        return self._arguments is not None

    @property
    def tail_start(self) -> int:
        """Where the text after the last streamed call's arguments begins (0 before any call)."""
        return self._next_at

    def head(self, text: str) -> str | None:
        """The name of the call whose head the region's text so far completes, else None (nothing new)."""
        if self._no_more or self.in_arguments or (self.streamed and not self._in_array):
            return None
        found = self._find_head(text, self._next_at)
        if found is None:
            if len(text) - self._next_at > MAX_HEAD_CHARS:
                self._no_more = True
            return None
        if not self.streamed:
            self._in_array = found.opens_array
        self._arguments = JsonValueScanner(start=found.arguments_at)
        self._arguments_at = self._handed = found.arguments_at
        self.streamed += 1
        return found.name

    def arguments(self, text: str, end: int | None = None) -> tuple[str, str | None]:
        """The argument text newly scanned (up to ``end``), and the whole arguments once their object closed."""
        assert self._arguments is not None
        closed = self._arguments.scan(text, end)
        stop = (len(text) if end is None else end) if closed is None else closed
        fragment, self._handed = text[self._handed : stop], stop
        if closed is None:
            return fragment, None
        self._arguments = None
        self._next_at = closed
        return fragment, text[self._arguments_at : closed]
