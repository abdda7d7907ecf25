"""Draft tokens without a draft model: n-gram lookup in the request's own prompt and output.

The last few tokens of a sequence are looked up where they occurred before (the prompt a file was
pasted in, an earlier turn, the output so far); the tokens that followed them then are the draft.
The scheduler decodes the draft in the same batch as the sequence's next token and keeps the drafts
the sequence's own sampler would have chosen, so output is unchanged (greedy) or keeps the model's
distribution (sampled): each kept token *is* a sample of the model given the tokens before it.

How long a draft is adapts to how often drafts are kept, and a sequence whose drafts keep missing
stops drafting for a while, so plain chat pays next to nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

NGRAM_SIZES = (4, 3, 2)
"""Lookup keys, longest first: a longer match predicts better, a shorter one matches more often."""
MIN_DRAFT = 2
MAX_COOLDOWN = 64  # emitted tokens without drafting after repeated misses, at most


@dataclass(frozen=True)
class DraftStats:
    """How many tokens were drafted and how many of them were kept."""

    drafted: int = 0
    accepted: int = 0

    def plus(self, drafted: int, accepted: int) -> DraftStats:
        """These counts with one more verification added."""
        return DraftStats(self.drafted + drafted, self.accepted + accepted)


class NgramDrafter:
    """One sequence's token history, indexed by its n-grams, and its adaptive draft length."""

    def __init__(self, tokens: Iterable[int] = (), max_draft: int = 16):
        self._tokens: list[int] = []
        self._index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in NGRAM_SIZES}
        self._matches: dict[int, int | None] = {n: None for n in NGRAM_SIZES}
        self.max_draft = max_draft
        self._length = min(max_draft, 4)  # the next draft's length
        self._misses = 0
        self._cooldown = 0
        self.stats = DraftStats()
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append tokens to the history (the prompt at first, then each emitted token)."""
        for token in tokens:
            self._tokens.append(token)
            end = len(self._tokens)
            for n, index in self._index.items():
                if end < n:
                    continue
                key = tuple(self._tokens[end - n:end])
                self._matches[n] = index.get(key)  # where this n-gram ended before, if it did
                index[key] = end
            if self._cooldown:
                self._cooldown -= 1

    def propose(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the longest earlier match of the history's tail."""
        limit = min(limit, self._length)
        if limit <= 0 or self._cooldown:
            return []
        for n in NGRAM_SIZES:
            start = self._matches[n]
            if start is not None:
                return self._tokens[start:start + limit]
        return []

    def record(self, drafted: int, accepted: int) -> None:
        """Adapt to one verification: lengthen after a fully kept draft, shorten or pause after misses."""
        if drafted <= 0:
            return
        self.stats = self.stats.plus(drafted, accepted)
        if accepted == drafted:
            self._length = min(self.max_draft, self._length * 2)
        else:
            self._length = max(MIN_DRAFT, min(self.max_draft, accepted + 1))
        if accepted == 0:
            self._misses += 1
            self._cooldown = min(MAX_COOLDOWN, 2 ** self._misses)
        else:
            self._misses = 0
