"""Runaway repetition: the output's tail is one block of tokens repeated over and over.

A small model sometimes falls into a loop ("She is not America." until the context is full). The
detector is fed one token at a time (any hashable key: a token id, or its bytes) and reports a
`Repetition` once the last `min_tokens` or more tokens are a block of at most `max_period` tokens
repeated at least `min_repeats` times, exactly. Normal text, and code with similar lines (asserts,
table rows, JSON objects that differ in a value), breaks an exact period within a line or two.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

DEFAULT_MIN_TOKENS = 128
DEFAULT_MAX_PERIOD = 128
DEFAULT_MIN_REPEATS = 12


@dataclass(frozen=True)
class RepetitionLimits:
    """When a repeating tail counts as a runaway."""

    min_tokens: int = DEFAULT_MIN_TOKENS  # the repeating tail covers at least this many tokens
    max_period: int = DEFAULT_MAX_PERIOD  # longest block considered, in tokens
    min_repeats: int = DEFAULT_MIN_REPEATS  # and the block occurs at least this many times

    def __post_init__(self) -> None:
        if self.min_tokens < 2 or self.max_period < 1 or self.min_repeats < 2:
            raise ValueError(f"repetition limits out of range: {self}")

    def tail_needed(self, period: int) -> int:
        """Tokens a period-`period` tail must cover to count."""
        return max(self.min_tokens, self.min_repeats * period)


@dataclass(frozen=True)
class Repetition:
    """A runaway found: the block length and how many of the last tokens repeat it."""

    period: int
    tokens: int

    @property
    def repeats(self) -> float:
        """How many times the block occurs in the repeating tail."""
        return self.tokens / self.period


class RepetitionDetector:
    """Incremental detector: O(max_period) work per token, O(max_period) memory."""

    def __init__(self, limits: RepetitionLimits = RepetitionLimits()):
        self.limits = limits
        self._recent: deque[Hashable] = deque(maxlen=limits.max_period)
        # _runs[p - 1]: how many of the latest tokens each equal the token p positions before them
        self._runs = [0] * limits.max_period
        self.fed = 0

    def feed(self, token: Hashable) -> Repetition | None:
        """Take the next output token; the runaway it completes, if any (the shortest period wins)."""
        recent, runs = self._recent, self._runs
        found: Repetition | None = None
        # recent[-p] is the token p positions back; only periods with a full block behind them count
        for period in range(1, len(recent) + 1):
            if recent[-period] == token:
                run = runs[period - 1] + 1
                runs[period - 1] = run
                if found is None and run + period >= self.limits.tail_needed(period):
                    found = Repetition(period, run + period)
            else:
                runs[period - 1] = 0
        recent.append(token)
        self.fed += 1
        return found
