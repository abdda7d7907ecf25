"""Pure text-stream pieces: UTF-8-safe incremental decoding and stop-sequence matching."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from minerva.parsers.base import partial_marker_length


@dataclass
class IncrementalDecoder:
    """Bytes of tokens in, text out; never emits half of a multi-byte UTF-8 character."""

    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    def feed(self, piece: bytes) -> str:
        """Decode a token's bytes; a partial character waits for the next piece."""
        return self._decoder.decode(piece, final=False)

    def flush(self) -> str:
        """Whatever is left at the end (an incomplete character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


def completed_stop(text: str, stops: tuple[str, ...]) -> tuple[int, str] | None:
    """Where the text is cut and by which stop sequence: the one that completes first (earliest start on a tie).

    Generation ends as soon as a stop sequence is complete, so a longer one that began earlier but
    would end later never gets the chance to match.
    """
    best: tuple[int, int, str] | None = None
    for stop in stops:
        start = text.find(stop)
        if start >= 0 and (best is None or (start + len(stop), start) < best[:2]):
            best = (start + len(stop), start, stop)
    return None if best is None else (best[1], best[2])


@dataclass
class StopMatcher:
    """Finds stop sequences across chunk boundaries; text that might begin one is held back."""

    stops: tuple[str, ...]
    _held: str = ""
    stopped: bool = False
    matched: str | None = None  # the stop sequence that ended the stream

    def feed(self, text: str) -> str:
        """Text safe to emit now; sets `stopped` when a stop sequence completes (it is never emitted)."""
        if self.stopped or not text:
            return ""
        if not self.stops:
            return text
        buffer = self._held + text
        found = completed_stop(buffer, self.stops)
        if found is not None:
            self.stopped = True
            self.matched = found[1]
            self._held = ""
            return buffer[: found[0]]
        keep = partial_marker_length(buffer, self.stops)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """Held-back text at the end of the stream (it never became a stop sequence)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
