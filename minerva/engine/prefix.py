"""Shared token prefixes: how a new prompt finds the cached sequence it continues (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two token sequences share."""
    n = min(len(a), len(b))
    i = 0
    # compare in blocks first: slicing compares in C, far faster than a Python loop per token
    step = 256
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


class _HoldsTokens(Protocol):
    @property
    def tokens(self) -> Sequence[int]: ...


H = TypeVar("H", bound=_HoldsTokens)


def longest_shared_prefix(holders: Iterable[H], prompt: Sequence[int]) -> tuple[H | None, int]:
    """The holder whose tokens share the longest prefix with `prompt` (first on ties), and that length."""
    best, best_len = None, 0
    for holder in holders:
        n = common_prefix_length(holder.tokens, prompt)
        if n > best_len:
            best, best_len = holder, n
    return best, best_len
