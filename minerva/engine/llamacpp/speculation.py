"""Draft tokens without a draft model: the continuation of the longest earlier match of the sequence's tail.

The sequence's tokens (the prompt a file was pasted in, an earlier turn, the output so far, and what
the slot held before: a previous answer to the same prompt) are searched for the longest earlier
occurrence of the sequence's tail; the tokens that followed it then are the draft, extended past the
end of the history when the match overlaps it (a loop drafts as far as it repeats). The scheduler
decodes the draft in the same batch as the sequence's next token and keeps the drafts the
sequence's own sampler would have chosen, so output is unchanged (greedy) or keeps the model's
distribution (sampled): each kept token *is* a sample of the model given the tokens before it.

How long a draft is follows the match's track record and a cost model. Every emitted token is
checked against what the current match predicted, drafted or not, and counted by the length of the
match that predicted it (4-7, 8-15, 16-31, 32+ tokens): long matches in a copy are right
almost always, short ones in plain chat rarely. A verified row costs a fixed share of a one-token step
(the `speculation_row_cost` setting: 0.55 measured on this project's 2-core CPU; far less on a
GPU), so the draft length is the longest of those within 2% of the most expected tokens per unit of
decode time, the chance of each further token read from its match length's record; none is drafted
where no length pays (plain chat on a CPU, mostly). Nothing here depends on timing, so the same request on the same
history drafts the same way every time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

KEY_SIZES = (8, 4)
"""Index keys, longest first: an 8-token key finds a copy's true source among common short n-grams; a
match needs 4 tokens at least (shorter ones predict about as often as not, which rarely pays)."""
CANDIDATES = 8  # latest occurrences of a key measured for the longest match
MAX_MATCH = 64  # a match is measured up to this many tokens
MATCH_CLASSES = (4, 8, 16, 32)  # lower bounds of the match lengths whose records are kept apart
PRIORS = ((1.0, 1.0), (2.0, 1.0), (4.0, 1.0), (16.0, 1.0))  # (kept, missed) before any evidence
RECORD_DECAY = 0.9  # weight of the past in a class's record, per token it predicted (a copy ends abruptly)
LONG_DRAFT_SLACK = 0.02  # of lengths this close to the best gain, the longest is drafted
DEFAULT_ROW_SHARE = 0.55  # a verified row's cost as a share of a one-token step (this machine's CPU)


def match_class(length: int) -> int:
    """The index in MATCH_CLASSES of a match of `length` tokens (at least the shortest key)."""
    index = 0
    while index + 1 < len(MATCH_CLASSES) and length >= MATCH_CLASSES[index + 1]:
        index += 1
    return index


def shared_row_cost(row_share: float, sequences: int) -> float:
    """A draft row's cost as seen by one of `sequences` decoding in the same step: its own share when
    it decodes alone, a whole step's (so nothing is drafted) when others decode beside it.

    With one KV stream per sequence llama.cpp splits a batch into ubatches holding the same number of
    tokens of each sequence, so one sequence's draft rows are decoded in a pass of their own that
    every sequence in the step waits for: measured with four plain-chat streams, drafts of two or
    three tokens made the step ~10% slower in all.
    """
    return row_share if sequences <= 1 else 1.0


def expected_gain(chances: Sequence[float], row_share: float) -> float:
    """Tokens per unit of decode time with a draft of len(chances) tokens, relative to one token a step.

    Draft token i is kept with probability chances[i] given the ones before it were; a step with
    `length` extra rows costs 1 + row_share * length one-token steps.
    """
    kept, run = 0.0, 1.0
    for chance in chances:
        run *= chance
        kept += run
    return (1 + kept) / (1 + row_share * len(chances))


def best_draft_length(chances: Sequence[float], row_share: float) -> int:
    """The longest draft (a prefix of `chances`) whose expected gain is within LONG_DRAFT_SLACK of the best;
    0 when no length beats plain decoding.

    On a sure copy the gain barely changes with length under a linear row cost, while llama.cpp's
    CPU kernels compute a batch of 64 rows for about half the per-row cost of a shorter one at long
    context (measured here): so of nearly equal lengths the longest is drafted.
    """
    gains = []
    kept, run = 0.0, 1.0
    for length, chance in enumerate(chances, start=1):
        run *= chance
        kept += run
        gains.append((1 + kept) / (1 + row_share * length))
    best_gain = max(gains, default=1.0)
    if best_gain <= 1.0 + 1e-9:
        return 0
    return max(length for length, gain in enumerate(gains, start=1) if gain >= best_gain * (1 - LONG_DRAFT_SLACK))


@dataclass(frozen=True)
class DraftStats:
    """How many tokens were drafted and how many of them were kept."""

    drafted: int = 0
    accepted: int = 0

    def plus(self, drafted: int, accepted: int) -> DraftStats:
        """These counts with one more verification added."""
        return DraftStats(self.drafted + drafted, self.accepted + accepted)


class NgramDrafter:
    """One sequence's token history, indexed by its n-grams, the current match and its track record.

    `reference` is history the sequence did not write (what its slot held before): it is searched
    like the prompt, but the prompt's tail is matched, never the reference's.
    """

    def __init__(self, tokens: Iterable[int] = (), max_draft: int = 63, reference: Iterable[int] = ()):
        self._tokens: list[int] = []
        self._index: dict[int, dict[tuple[int, ...], list[int]]] = {n: {} for n in KEY_SIZES}
        self.max_draft = max_draft
        self._source: int | None = None  # where the tokens following the current match are
        self._length = 0  # how many tokens the current match holds (at most MAX_MATCH)
        self._stale = True  # the match must be searched again before it is used
        self._records = [list(prior) for prior in PRIORS]
        self.stats = DraftStats()
        self._append(reference)
        self._own_start = len(self._tokens)
        self._append(tokens)

    def _append(self, tokens: Iterable[int]) -> None:
        history = self._tokens
        for token in tokens:
            history.append(token)
            end = len(history)
            for n, index in self._index.items():
                if end >= n:
                    index.setdefault(tuple(history[end - n:end]), []).append(end)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append emitted tokens, each first scored against what the current match predicted."""
        for token in tokens:
            self._follow(token)
            self._append((token,))

    def _follow(self, token: int) -> None:
        """Score the current match's prediction of `token` in its class's record and move the match on."""
        self._refresh()
        if self._source is None:
            self._stale = True  # the new token may complete a match
            return
        kept = self._tokens[self._source] == token
        record = self._records[match_class(self._length)]
        record[0] = RECORD_DECAY * record[0] + kept
        record[1] = RECORD_DECAY * record[1] + (not kept)
        if kept:
            self._source += 1
            self._length = min(self._length + 1, MAX_MATCH)
        else:
            self._stale = True

    def _refresh(self) -> None:
        """Find the longest earlier match of the history's tail (the latest of equals) when the last one broke."""
        if not self._stale:
            return
        self._stale = False
        self._source, self._length = None, 0
        history = self._tokens
        end = len(history)
        for n in KEY_SIZES:
            if end - self._own_start < n:
                continue
            ends = self._index[n].get(tuple(history[end - n:end]), ())
            for candidate in reversed(ends[-CANDIDATES - 1:]):
                if candidate >= end:
                    continue
                length = n
                while (length < MAX_MATCH and candidate - length > 0
                       and history[candidate - length - 1] == history[end - length - 1]):
                    length += 1
                if length > self._length:
                    self._source, self._length = candidate, length
            if self._source is not None:
                return

    def chance(self, length: int) -> float:
        """The recorded chance that a match of `length` tokens predicts the next token right."""
        kept, missed = self._records[match_class(length)]
        return kept / (kept + missed)

    def propose(self, limit: int, row_share: float = DEFAULT_ROW_SHARE) -> list[int]:
        """Up to `limit` tokens that followed the longest earlier match of the history's tail, as many as
        pays at the match's recorded chances and the row cost."""
        limit = min(limit, self.max_draft)
        if limit <= 0:
            return []
        self._refresh()
        if self._source is None:
            return []
        chances = [self.chance(min(self._length + i, MAX_MATCH)) for i in range(limit)]
        length = best_draft_length(chances, row_share)
        history, source = self._tokens, self._source
        if source < self._own_start:  # the reference's end is not followed by the sequence's start
            return history[source:min(source + length, self._own_start)]
        draft: list[int] = []
        for i in range(length):  # past the history's end the draft continues from itself (a loop)
            at = source + i
            draft.append(history[at] if at < len(history) else draft[at - len(history)])
        return draft

    def record(self, drafted: int, accepted: int) -> None:
        """Count one verification (the emitted tokens themselves already scored the match)."""
        if drafted > 0:
            self.stats = self.stats.plus(drafted, accepted)
