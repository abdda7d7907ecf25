"""Pure text-stream pieces: UTF-8-safe incremental decoding and stop-sequence matching."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field


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


def first_completed_stop(text: str, stops: tuple[str, ...]) -> int:
    """Where the text is cut: at the stop sequence that completes first (earliest start on a tie), or -1.

    Generation ends as soon as a stop sequence is complete, so a longer one that began earlier but
    would end later never gets the chance to match.
    """
    best: tuple[int, int] | None = None
    for stop in stops:
        start = text.find(stop)
        if start >= 0 and (best is None or (start + len(stop), start) < best):
            best = (start + len(stop), start)
    return -1 if best is None else best[1]


@dataclass
class StopMatcher:
    """Finds stop sequences across chunk boundaries; text that might begin one is held back."""

    stops: tuple[str, ...]
    _held: str = ""
    stopped: bool = False

    def feed(self, text: str) -> str:
        """Text safe to emit now; sets `stopped` when a stop sequence completes (it is never emitted)."""
        if self.stopped or not text:
            return ""
        if not self.stops:
            return text
        buffer = self._held + text
        first = first_completed_stop(buffer, self.stops)
        if first >= 0:
            self.stopped = True
            self._held = ""
            return buffer[:first]
        keep = self._longest_stop_prefix_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """Held-back text at the end of the stream (it never became a stop sequence)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_stop_prefix_suffix(self, buffer: str) -> int:
        best = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:length]):
                    best = length
                    break
        return best
