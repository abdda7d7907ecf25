"""Draft tokens without a draft model: n-gram lookup in the request's own prompt and output.

The last few tokens of a sequence are looked up where they occurred before (the prompt a file was
pasted in, an earlier turn, the output so far); the tokens that followed them then are the draft.
The scheduler decodes the draft in the same batch as the sequence's next token and keeps the drafts
the sequence's own sampler would have chosen, so output is unchanged (greedy) or keeps the model's
distribution (sampled): each kept token *is* a sample of the model given the tokens before it.

How long a draft is follows a cost model: a verified row costs a fixed share of a one-token step (the
`speculation_row_cost` setting: 0.55 measured on this project's 2-core CPU at short context, 0.8 at
4k tokens; far less on a GPU), and a draft token is kept with the
sequence's measured acceptance rate, so the draft length is the one that maximises expected tokens
per unit of decode time, and none is drafted where drafting would not pay (plain chat on a CPU,
mostly). Nothing here depends on timing, so the same request drafts the same way every time. A
sequence that is not drafting probes with a short draft now and then, so a copy that starts later
is still found.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

NGRAM_SIZES = (4, 3, 2)
"""Lookup keys, longest first: a longer match predicts better, a shorter one matches more often."""
MAX_COOLDOWN = 64  # emitted tokens without drafting after repeated misses, at most
PROBE_DRAFT = 2  # the draft length of a probe, when the cost model says drafting does not pay
PROBE_NGRAM = 4  # a probe needs a match this long: in plain chat those are rare, in a copy everywhere
PROBE_SPACING = 16  # emitted tokens between probes (doubled per failed probe, up to MAX_COOLDOWN)
PRIOR_ACCEPTED, PRIOR_REJECTED = 1.0, 1.0  # a new sequence starts at even odds: it drafts once a probe is kept
ACCEPTANCE_DECAY = 0.7  # weight of the past in the acceptance estimate, per verification (a copy ends abruptly)
DEFAULT_ROW_SHARE = 0.55  # a verified row's cost as a share of a one-token step (this machine's CPU, short context)


def expected_gain(acceptance: float, length: int, row_share: float) -> float:
    """Tokens per unit of decode time with a draft of `length`, relative to decoding one token a step.

    Draft tokens are kept one after another with probability `acceptance` until the first miss; a
    step with `length` extra rows costs 1 + row_share * length one-token steps.
    """
    a = min(max(acceptance, 0.0), 0.999)
    kept = a * (1 - a ** length) / (1 - a) if length > 0 else 0.0
    return (1 + kept) / (1 + row_share * length)


def best_draft_length(acceptance: float, row_share: float, limit: int) -> int:
    """The draft length with the highest expected gain, or 0 when no length beats plain decoding."""
    best, best_gain = 0, 1.0
    for length in range(1, limit + 1):
        gain = expected_gain(acceptance, length, row_share)
        if gain > best_gain + 1e-9:
            best, best_gain = length, gain
    return best


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
        self._accepted, self._rejected = PRIOR_ACCEPTED, PRIOR_REJECTED  # decayed counts of kept tokens, misses
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

    @property
    def acceptance(self) -> float:
        """The estimated chance that the next draft token is kept, given the ones before it were."""
        return self._accepted / (self._accepted + self._rejected)

    def propose(self, limit: int, row_share: float = DEFAULT_ROW_SHARE) -> list[int]:
        """Up to `limit` tokens that followed the longest earlier match of the history's tail, as many as
        pays at the measured acceptance and row cost (a short probe when none pays)."""
        if limit <= 0 or self._cooldown:
            return []
        start = next((self._matches[n] for n in NGRAM_SIZES if self._matches[n] is not None), None)
        if start is None:
            return []
        length = best_draft_length(self.acceptance, row_share, min(limit, self.max_draft))
        if length == 0:
            if self._matches[PROBE_NGRAM] is None:
                return []
            length = min(limit, PROBE_DRAFT)
            self._cooldown = min(MAX_COOLDOWN, PROBE_SPACING * 2 ** self._misses)  # probes are spaced out
        return self._tokens[start:start + length]

    def record(self, drafted: int, accepted: int) -> None:
        """Learn from one verification: the kept run, and a miss unless every draft token was kept."""
        if drafted <= 0:
            return
        self.stats = self.stats.plus(drafted, accepted)
        self._accepted = ACCEPTANCE_DECAY * self._accepted + accepted
        self._rejected = ACCEPTANCE_DECAY * self._rejected + (accepted < drafted)
        if accepted == 0:
            self._misses += 1
            self._cooldown = max(self._cooldown, min(MAX_COOLDOWN, 2 ** self._misses))
        else:
            self._misses = 0
            self._cooldown = 0  # a kept probe: draft again at once
